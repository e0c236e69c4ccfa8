"""The data sections of the run configuration (`data:` in a YAML file) and the error every config check raises.
This module sits at the bottom of the import graph, so the data code reads its own settings without climbing to
engine/; engine/config.py composes these sections with the others into the full `Config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message is one line naming the field."""


@dataclass
class AugmentConfig:
    """Training augmentation as the reference (docs/method.md); evaluation only resizes and normalises."""

    # Resize: bilinear (torchvision's default) | bicubic; evaluation during training and `eval run --config` follow
    # it, evaluation of a checkpoint resizes bilinearly (the reference's test transform)
    interpolation: str = "bilinear"
    hflip_prob: float = 0.5
    crop_padding: int = 10  # pad each side, then random-crop back to image_size
    erasing_prob: float = 0.5
    erasing_scale: tuple[float, float] = (0.02, 0.4)  # share of the image area erased
    # Random erasing runs after Normalize. mean: the CLIP mean RGB triple is written into the normalised tensor, the
    # reference's quirk (value=mean on an already normalised image); zero: 0, i.e. the mean colour itself.
    erasing_value: str = "mean"

    def __post_init__(self) -> None:
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(f"data.augment.interpolation must be bilinear or bicubic (got {self.interpolation!r})")
        if self.erasing_value not in ("mean", "zero"):
            raise ConfigError(f"data.augment.erasing_value must be mean or zero (got {self.erasing_value!r})")
        low, high = self.erasing_scale
        if not 0.0 < low <= high <= 1.0:
            raise ConfigError(f"data.augment.erasing_scale must satisfy 0 < low <= high <= 1 (got {[low, high]})")


@dataclass
class DataConfig:
    shards: str = "data/luperson_mllm_shards"  # folder holding manifest.json and the shards (wds or MDS)
    # Where the shard folder lives when not local: s3://bucket/prefix (S3_ENDPOINT_URL names an S3-compatible store),
    # http(s)://..., gs://..., or a path; `shards` is then this node's local cache of it (docs/data.md, "Remote shards").
    remote: str | None = None
    fetch_attempts: int = 8  # tries per remote file before the run stops (resumably) naming the endpoint and shard
    fetch_first_wait_s: float = 1.0  # wait after the first failed try, doubling up to 60 s (8 tries: about 2 min)
    num_workers: int = 2  # DataLoader workers per rank
    shuffle_buffer: int = 2000  # samples held for shuffling inside a worker
    interleave_shards: int = 4  # shards each worker reads at once, records drawn from them at random
    # every_caption: an image's captions go to different passes over the worker's shards (each shard is read once per
    # caption source), so two captions of one image share a batch less often than at random instead of far more
    # often; false reads each shard once and the captions of an image stay within the shuffle buffer of each other.
    spread_captions: bool = True
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
        if self.fetch_attempts < 1:
            raise ConfigError(f"data.fetch_attempts must be >= 1 (got {self.fetch_attempts})")
        if self.fetch_first_wait_s < 0:
            raise ConfigError(f"data.fetch_first_wait_s must be >= 0 (got {self.fetch_first_wait_s})")
        if self.remote is not None and urlsplit(self.remote).username is not None:
            raise ConfigError("data.remote must not carry credentials (user:password@); set them in the environment")
        if self.interleave_shards < 1:
            raise ConfigError(f"data.interleave_shards must be >= 1 (got {self.interleave_shards})")
