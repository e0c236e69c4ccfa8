"""The caption stream a run reads, built from its config in one place: the trainer uses it, and so do the checks
that run before training (engine/runtime/preflight.py), so that both see the same batches per epoch."""

from __future__ import annotations

from data.caption_stream import CaptionSampleStream
from data.manifest import Manifest
from data.object_store import RetryPolicy
from engine.config import Config


def fetch_policy(config: Config) -> RetryPolicy:
    """How long remote shard fetches wait for a store that does not answer."""
    return RetryPolicy(attempts=config.data.fetch_attempts, first_wait_s=config.data.fetch_first_wait_s)


def load_manifest(config: Config) -> Manifest:
    """The run's manifest: local, or fetched into the local cache `data.shards` from `data.remote`."""
    return Manifest.load(config.data.shards, remote=config.data.remote, policy=fetch_policy(config))


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
        fetch_policy=fetch_policy(config),
        interleave_shards=config.data.interleave_shards,
        spread_captions=config.data.spread_captions,
    )
