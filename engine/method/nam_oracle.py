"""Oracle noise for NAM, an ablation ceiling (nam.oracle_noise): the synthetic set's recorded wrong words get
r = 1 and every other token r = 0, in place of the model's r = 1 - max_j cos. Everything else of NAM stays:
the scores of epoch e drive the masks of epoch e + 1 through the noise table and Eq. 4's centring.

The synthetic generator records each wrong word as (caption file, image, character span) in noise_words.jsonl
beside the caption files; packing numbers captions image_index * num_sources + source_index with images in the seeded
random order its manifest records (data/pack.py, data/order.py), which maps a record to its caption id. The caption's tokens are found by encoding it
piece by piece at the span's edges, as eval/analysis/noise_auroc.py does.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from data.caption_files import is_dirty
from data.manifest import MANIFEST, Manifest
from data.order import packed_positions
from data.tokenizer import CaptionTokenizer
from engine.config import ConfigError


class OracleNoise:
    """caption id -> token positions [first, last) of its wrong word, counted in the tokenized caption (SOT at 0)."""

    def __init__(self, spans: dict[int, tuple[int, int]]) -> None:
        self.spans = spans

    @classmethod
    def load(cls, noise_words: str | Path, manifest: Manifest, context_length: int) -> OracleNoise:
        path = Path(noise_words)
        if not path.is_file():
            raise ConfigError(f"nam.oracle_noise: {path} not found (data.synthetic writes noise_words.jsonl)")
        folder = path.parent
        sources = list(manifest.sources)
        packing = json.loads((Path(manifest.root) / MANIFEST).read_text())
        position = packed_positions([p.name for p in (folder / "imgs").iterdir()], packing.get("image_order"))
        dirty_rule = packing.get("dirty_caption_rule", "same_captioner")
        tokenizer = CaptionTokenizer(context_length)
        texts: dict[str, dict[str, str]] = {}
        spans: dict[int, tuple[int, int]] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            source = Path(record["file"]).stem
            if source not in sources or record["image"] not in position:
                raise ConfigError(f"nam.oracle_noise: {path}:{number} names a caption that was not packed")
            if source not in texts:
                texts[source] = json.loads((folder / record["file"]).read_text(encoding="utf-8"))
            text = texts[source][record["image"]]
            if is_dirty(text, dirty_rule):  # packing replaced this caption by a clean one of the image
                continue
            start, end = record["char_start"], record["char_end"]
            first = 1 + len(tokenizer.encode(text[:start].rstrip())) if start else 1
            last = 1 + len(tokenizer.encode(text[:end]))
            caption_id = position[record["image"]] * len(sources) + sources.index(source)
            spans[caption_id] = (first, min(last, context_length - 1))
        return cls(spans)

    def noise(self, caption_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B,) caption ids, (B, N) valid -> (B, N) float32: 1 on the recorded wrong word's tokens, else 0."""
        noise = torch.zeros(valid.shape, dtype=torch.float32)
        for row, caption_id in enumerate(caption_ids.tolist()):
            if caption_id in self.spans:
                first, last = self.spans[caption_id]
                noise[row, first:last] = 1.0
        return noise.to(valid.device).masked_fill(~valid, 0.0)


@functools.cache
def _oracle(noise_words: str, shards: str, context_length: int) -> OracleNoise:
    return OracleNoise.load(noise_words, Manifest.load(shards), context_length)


def oracle_noise(config, caption_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The oracle's (B, N) noise for a batch under `config` (loaded once per process)."""
    oracle = _oracle(config.nam.oracle_noise, config.data.shards, config.model.context_length)
    return oracle.noise(caption_ids.cpu(), valid)


__all__ = ["OracleNoise", "oracle_noise"]
