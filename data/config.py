"""The data sections of the run configuration (`data:` in a YAML file) and the error every config check raises.
This module sits at the bottom of the import graph, so the data code reads its own settings without climbing to
engine/; engine/config.py composes these sections with the others into the full `Config`."""

from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message is one line naming the field."""


@dataclass
class AugmentConfig:
    """Training augmentation of METHOD.md §6; evaluation only resizes and normalises."""

    hflip_prob: float = 0.5
    crop_padding: int = 10  # pad each side, then random-crop back to image_size
    erasing_prob: float = 0.5


@dataclass
class DataConfig:
    shards: str = "data/luperson_mllm_shards"  # folder holding manifest.json and the shards (wds or MDS)
    remote: str | None = None  # MDS only: where shards live (s3://..., gs://..., a path); `shards` is the local cache
    num_workers: int = 2  # DataLoader workers per rank
    shuffle_buffer: int = 2000  # samples held for shuffling inside a worker
    sampling: str = "every_caption"  # every caption its own sample (reference) | one_caption_per_image per epoch
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # An epoch in which a larger share of the samples was damaged (skipped) stops the run with the counts.
    max_damaged_share: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_damaged_share <= 1.0:
            raise ConfigError(f"data.max_damaged_share must be in [0, 1] (got {self.max_damaged_share})")
        if self.sampling not in ("every_caption", "one_caption_per_image"):
            raise ConfigError(
                f"data.sampling must be one of every_caption, one_caption_per_image (got {self.sampling!r})"
            )
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0 (got {self.num_workers})")
        if self.shuffle_buffer < 1:
            raise ConfigError(f"data.shuffle_buffer must be >= 1 (got {self.shuffle_buffer})")
