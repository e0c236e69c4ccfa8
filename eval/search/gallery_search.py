"""Search an indexed gallery (`eval.search.gallery_index`) by description.

python -m eval search --index INDEX "a woman in a red coat" [--top 10] [--json] [--approximate [--probes N]]

Only the text tower is built and only its weights are read from the checkpoint the index records (or from
--checkpoint); the checkpoint's sha256 and config must equal the index's, or the search is refused. A query
longer than the model's context (77 tokens for CLIP) is cut to it, with a warning.

Exact search streams the features from the file in chunks and keeps a running top-k, so it needs about
`--memory-budget-mb` beyond the text tower whatever the gallery size. `--approximate` searches the FAISS
part that `index --approximate` built instead (an inverted file: `--probes` of its lists are scanned, by default
a quarter of them).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from data.cli_errors import error_boundary, positive_int
from data.tokenizer import CaptionTokenizer
from engine.config import ConfigError, ModelConfig, build_section
from engine.model.blocks import CLIPTextTransformer
from engine.model.clip import CLIPDualEncoder, tower_configs
from engine.runtime.checkpoint import MODEL_FILE, CheckpointError, is_weights_file, load_exported_model
from eval.search.gallery_index import GalleryIndex, GalleryIndexError, ModelIdentity, read_index, require_faiss

DEFAULT_BUDGET_MB = 256
PROBED_FRACTION = 4  # --approximate scans a quarter of the lists unless --probes says otherwise
TEXT_PREFIXES = ("text_model.", "text_projection.")


class TextTower(nn.Module):
    """The dual encoder's text half: the same modules under the same names, and its own encode_text."""

    _text_hidden = CLIPDualEncoder._text_hidden
    _project_text = CLIPDualEncoder._project_text
    encode_text = CLIPDualEncoder.encode_text

    def __init__(self, cfg: ModelConfig, tap_layer: int) -> None:
        super().__init__()
        self.cfg, self.tap_layer = cfg, tap_layer
        self.text_model = CLIPTextTransformer(tower_configs(cfg)[1])
        self.text_projection = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)


def load_text_tower(tag_dir: Path, model_config: dict) -> TextTower:
    """Reads only the text tower's tensors from model.safetensors (the image tower is never loaded); a weights file
    is read whole and its text tower kept."""
    if is_weights_file(tag_dir):
        model, _ = load_exported_model(tag_dir)
        tower = TextTower(model.cfg, tap_layer=model.tap_layer)
        tower.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(TEXT_PREFIXES)})
        return tower.eval()
    try:
        cfg = build_section(ModelConfig, model_config["model"], "model")
        tower = TextTower(cfg, tap_layer=int(model_config["tap_layer"]))
        with safe_open(str(tag_dir / MODEL_FILE), framework="pt") as file:
            state = {k: file.get_tensor(k) for k in file.keys() if k.startswith(TEXT_PREFIXES)}  # noqa: SIM118
        tower.load_state_dict(state, strict=True)
    except (KeyError, ConfigError, RuntimeError, OSError, SafetensorError) as error:
        raise CheckpointError(f"cannot load the text tower in {tag_dir}: {str(error).splitlines()[0]}") from None
    return tower.eval()


def exact_top_k(
    queries: torch.Tensor,
    rows: Callable[[int, int], torch.Tensor],
    num_rows: int,
    *,
    k: int,
    memory_budget: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, indices), each (Q, min(k, G)), best first: inner products of the unit-norm (Q, E) queries with all
    G gallery rows, `rows(start, stop)` returning rows [start, stop) in any float dtype. The gallery is visited
    in chunks sized so that a chunk's fp32 copy and its (Q, C) scores fit in `memory_budget` bytes, with a
    running top-k: memory does not grow with G."""
    num_queries, width = queries.shape
    k = min(k, num_rows)
    chunk = max(k, memory_budget // (4 * width + 8 * num_queries + 2 * width))  # fp32 copy, scores, topk, source
    best_scores = queries.new_full((num_queries, 0), float("-inf"))
    best_indices = torch.empty(num_queries, 0, dtype=torch.long)
    for start in range(0, num_rows, chunk):
        block = rows(start, min(start + chunk, num_rows)).float()  # (C, E)
        scores = torch.cat([best_scores, queries @ block.T], dim=1)  # (Q, k + C)
        indices = torch.cat([best_indices, torch.arange(start, start + len(block)).expand(num_queries, -1)], dim=1)
        best_scores, position = scores.topk(min(k, scores.shape[1]), dim=1)  # sorted, best first
        best_indices = indices.gather(1, position)
    return best_scores, best_indices


@dataclass
class Hit:
    rank: int
    path: str  # relative to the indexed folder
    score: float


@dataclass
class SearchResult:
    query: str
    truncated: bool  # the query was cut to the model's context
    method: str  # "exact" or "approximate"
    hits: list[Hit]


class GallerySearcher:
    """Text tower + index, loaded once; `search` answers one description."""

    def __init__(
        self,
        index_path: str | Path,
        *,
        checkpoint: str | Path | None = None,
        approximate: bool = False,
        probes: int | None = None,
        memory_budget: int = DEFAULT_BUDGET_MB << 20,
        in_memory: bool = False,
    ) -> None:
        """`in_memory` keeps the features in memory (a server answering many queries); otherwise each exact
        search streams them from the file."""
        if (probes is not None and probes < 1) or memory_budget < 1:
            raise GalleryIndexError(f"--probes and --memory-budget-mb must be >= 1 (got {probes}, {memory_budget})")
        if approximate:
            require_faiss("--approximate")
        self.index_path = Path(index_path)
        self.index: GalleryIndex = read_index(self.index_path, features=in_memory)
        self.model = self._checked_model(checkpoint)
        self.tower = load_text_tower(Path(self.model.checkpoint), self.model.model_config)
        self.tokenizer = CaptionTokenizer(self.tower.cfg.context_length)
        self.memory_budget = memory_budget
        self.approximate = self._load_approximate(probes) if approximate else None

    def _checked_model(self, checkpoint: str | Path | None) -> ModelIdentity:
        recorded = self.index.model
        try:
            model = ModelIdentity.of(checkpoint or recorded.checkpoint)
        except CheckpointError as error:
            hint = "" if checkpoint else " (pass --checkpoint if the model moved)"
            raise CheckpointError(f"{error}; {self.index_path} was built with it{hint}") from None
        if not recorded.same_model(model):
            raise GalleryIndexError(
                f"{self.index_path} was built with another model ({recorded.describe()}), not with "
                f"{model.describe()}: search it with that model or index the images again"
            )
        return model

    def _load_approximate(self, probes: int | None):
        import faiss

        if self.index.approximate is None:
            raise GalleryIndexError(
                f"{self.index_path} has no approximate index: rebuild it with `python -m eval index ... --approximate`"
            )
        with safe_open(str(self.index_path), framework="pt") as file:
            serialized = file.get_tensor("approximate").numpy()
        index = faiss.deserialize_index(serialized)
        lists = faiss.extract_index_ivf(index)
        lists.nprobe = probes or max(1, lists.nlist // PROBED_FRACTION)  # 1 M images: recall@10 0.92 (docs/search.md)
        return index

    @torch.no_grad()
    def encode_query(self, text: str) -> tuple[torch.Tensor, bool]:
        """(1, E) unit-norm query feature, and whether the text was cut to the context length."""
        truncated = len(self.tokenizer.encode(text)) + 2 > self.tokenizer.context_length  # + SOT and EOT
        return F.normalize(self.tower.encode_text(self.tokenizer([text])).float(), dim=-1), truncated

    def search(self, text: str, top: int = 10) -> SearchResult:
        check_query(text)
        if top < 1:
            raise GalleryIndexError(f"--top must be >= 1 (got {top})")
        query, truncated = self.encode_query(text)
        if self.approximate is not None:
            scores, indices = self.approximate.search(query.numpy(), min(top, len(self.index)))
            found = [(s, i) for s, i in zip(scores[0].tolist(), indices[0].tolist(), strict=True) if i >= 0]
            method = "approximate"
        else:
            scores, indices = exact_top_k(query, self._rows(), len(self.index), k=top, memory_budget=self.memory_budget)
            found = list(zip(scores[0].tolist(), indices[0].tolist(), strict=True))
            method = "exact"
        hits = [Hit(rank=r, path=self.index.paths[i], score=s) for r, (s, i) in enumerate(found, start=1)]
        return SearchResult(query=text, truncated=truncated, method=method, hits=hits)

    def _rows(self) -> Callable[[int, int], torch.Tensor]:
        if self.index.features is not None:
            features = self.index.features
            return lambda start, stop: features[start:stop]

        def from_file(start: int, stop: int) -> torch.Tensor:
            with safe_open(str(self.index_path), framework="pt") as file:
                return file.get_slice("features")[start:stop]

        return from_file


def check_query(text: str) -> None:
    """A description to search by: an empty one would rank the gallery by nothing at all."""
    if not text.strip():
        raise GalleryIndexError("the description (QUERY) is empty; describe the person, e.g. 'a man in a blue jacket'")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval search", description="Search an indexed gallery by text.")
    parser.add_argument("--index", required=True, help="an index written by python -m eval index")
    parser.add_argument("query", help="the description, e.g. 'a woman in a red coat with a black backpack'")
    parser.add_argument("--top", type=positive_int, default=10, help="results to print")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_search_arguments(parser)
    return parser.parse_args(argv)


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a search that `search` and `serve` share."""
    parser.add_argument("--checkpoint", help="the index's model, when it has moved since indexing")
    parser.add_argument("--approximate", action="store_true", help="search the FAISS index (index --approximate)")
    parser.add_argument(
        "--probes", type=positive_int, help="lists scanned by --approximate (default: a quarter of them)"
    )
    parser.add_argument(
        "--memory-budget-mb", type=positive_int, default=DEFAULT_BUDGET_MB, help="exact search's chunk memory"
    )


def searcher_from_args(args: argparse.Namespace, *, in_memory: bool = False) -> GallerySearcher:
    """The searcher of `add_search_arguments`' options (search and serve)."""
    return GallerySearcher(
        args.index,
        checkpoint=args.checkpoint,
        approximate=args.approximate,
        probes=args.probes,
        memory_budget=args.memory_budget_mb << 20,
        in_memory=in_memory,
    )


@error_boundary
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_query(args.query)
        searcher = searcher_from_args(args)
        result = searcher.search(args.query, args.top)
    except (GalleryIndexError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.truncated:
        print(
            f"warning: the query is longer than the model's {searcher.tokenizer.context_length} tokens; "
            "only its beginning is searched",
            file=sys.stderr,
        )
    root = searcher.index.images
    if args.json:
        hits = [
            {"rank": h.rank, "path": str(root / h.path), "relative_path": h.path, "score": h.score} for h in result.hits
        ]
        print(
            json.dumps({"query": result.query, "truncated": result.truncated, "method": result.method, "results": hits})
        )
    else:
        for hit in result.hits:
            print(f"{hit.rank:>4}  {hit.score:.4f}  {root / hit.path}")
    return 0
