"""Direct-transfer evaluation during pretraining (docs/method.md): every configured benchmark, every N epochs,
features extracted in parallel over the ranks. The best checkpoint is chosen on a validation split, never
on a test split; test numbers are logged beside it, separately."""

from __future__ import annotations

from pathlib import Path

import torch

from data.datasets import DATASETS, DatasetError, RetrievalSplit, load_split
from data.object_store import is_remote
from data.remote_datasets import local_root
from engine.config import EvalConfig
from engine.model import CLIPDualEncoder
from engine.runtime import collectives
from eval.encode import encode_split
from eval.metrics import retrieval_metrics_from_features

SELECTION_METRIC = "R1"


class TrainingEvaluator:
    """Holds the configured benchmarks' splits; `evaluate` is collective (every rank calls it)."""

    def __init__(self, config: EvalConfig, *, interpolation: str = "bilinear", cache: Path | None = None) -> None:
        """`cache`: the folder under which a benchmark root given as a URL is fetched (into cache/<benchmark>)."""
        self.config = config
        self.interpolation = interpolation  # data.augment.interpolation: evaluation resizes as training does
        self.splits: list[RetrievalSplit] = []
        for name, root in config.roots.items():
            if not is_remote(root) and not Path(root).is_dir():
                self._warn(f"eval.{name.replace('-', '_')} root {root} does not exist: {name} is not evaluated")
                continue
            splits = tuple(split for split in ("val", "test") if split in DATASETS[name].splits)
            local = self._fetch(name, root, splits, cache)
            self.splits += [self._load(name, local, split) for split in splits]
        # The first benchmark with a validation split picks the best checkpoint.
        self.selection = next((s for s in self.splits if s.split == "val"), None)
        if self.splits and self.selection is None:
            self._warn("no configured benchmark has a validation split: no best checkpoint is chosen (never on test)")

    def due(self, epochs_done: int) -> bool:
        return bool(self.splits) and self.config.every_epochs > 0 and epochs_done % self.config.every_epochs == 0

    def evaluate(self, model: CLIPDualEncoder, device: torch.device) -> list[dict]:
        """Metrics of every split, as log records on rank 0 (empty on the others)."""
        records = []
        for split in self.splits:
            image_feats, text_feats = encode_split(
                model, split, batch_size=self.config.batch_size, device=device, interpolation=self.interpolation
            )
            if collectives.rank() != 0:
                continue
            metrics = retrieval_metrics_from_features(
                text_feats.cpu(), image_feats.cpu(), torch.tensor(split.caption_pids), torch.tensor(split.image_pids)
            )
            selects = split is self.selection
            records.append({"eval": split.dataset, "split": split.split, "selects_best": selects, **metrics})
        return records

    @staticmethod
    def _fetch(name: str, root: str, splits: tuple[str, ...], cache: Path | None) -> Path:
        try:
            return local_root(name, root, cache=cache / name if cache else None, splits=splits)
        except DatasetError as error:
            raise DatasetError(f"eval.{name.replace('-', '_')}: {error}") from None

    @staticmethod
    def _load(name: str, root: str | Path, split: str) -> RetrievalSplit:
        try:
            return load_split(name, root, split)
        except DatasetError as error:
            raise DatasetError(f"eval.{name.replace('-', '_')}: {error}") from None

    @staticmethod
    def _warn(message: str) -> None:
        if collectives.rank() == 0:
            print(f"warning: {message}", flush=True)
