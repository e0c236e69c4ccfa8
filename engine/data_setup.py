"""The caption stream a run reads, built from its config in one place: the trainer uses it, and so do the checks
that run before training (engine/preflight.py), so that both see the same batches per epoch."""

from __future__ import annotations

from data.caption_stream import CaptionSampleStream
from data.manifest import Manifest
from engine.config import Config


def build_caption_stream(config: Config, manifest: Manifest, *, rank: int, world_size: int) -> CaptionSampleStream:
    return CaptionSampleStream(
        manifest,
        rank=rank,
        world_size=world_size,
        num_workers=config.data.num_workers,
        batch_size=config.train.batch_size,
        image_size=config.model.image_size,
        augment=config.data.augment,
        context_length=config.model.context_length,
        seed=config.train.seed,
        shuffle_buffer=config.data.shuffle_buffer,
        sampling=config.data.sampling,
        remote=config.data.remote,
        interleave_shards=config.data.interleave_shards,
        spread_captions=config.data.spread_captions,
    )
