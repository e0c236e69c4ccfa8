"""Stream training samples from webdataset shards: one sample per caption (the reference choice).

Shards are split statically by rank (shards[rank::world]) and then by DataLoader worker, so that a
rank sees the same captions every epoch, in an order shuffled deterministically from
(seed, epoch, rank, worker). Every sample is (image tensor, token ids, pid, global caption id)."""

from __future__ import annotations

import io
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.pack import IMAGE_SUFFIXES, MANIFEST
from data.transforms import train_transform
from engine.config import AugmentConfig
from engine.tokenizer import CLIPTokenizer

log = logging.getLogger(__name__)


class ShardError(ValueError):
    """A shard folder or manifest that cannot be read; the message names it."""


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    images: int
    captions: int


@dataclass(frozen=True)
class Manifest:
    root: Path
    sources: list[str]
    num_images: int
    caption_id_space: int  # caption ids lie in [0, caption_id_space)
    shards: list[ShardInfo]

    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise ShardError(f"no {MANIFEST} in shard folder {root} (pack the data first: python -m data.pack ...)")
        try:
            raw = json.loads(path.read_text())
            shards = [ShardInfo(root / s["name"], int(s["images"]), int(s["captions"])) for s in raw["shards"]]
            manifest = cls(root, list(raw["sources"]), int(raw["num_images"]), int(raw["caption_id_space"]), shards)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ShardError(f"manifest {path} is malformed: {error!r}") from None
        missing = [s.path.name for s in shards if not s.path.is_file()]
        if missing:
            raise ShardError(f"{len(missing)} shard(s) listed in {path} are missing, first: {missing[0]}")
        return manifest


def _seed(*parts: int) -> int:
    return hash(parts) & 0x7FFF_FFFF


class CaptionSampleStream(IterableDataset):
    """Yields dicts with image (3, H, W) float32, ids (N,) int64, pid and caption_id (ints)."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        rank: int,
        world_size: int,
        num_workers: int,
        image_size: tuple[int, int],
        augment: AugmentConfig,
        context_length: int,
        seed: int,
        shuffle_buffer: int,
    ) -> None:
        if len(manifest.shards) < world_size:
            raise ShardError(
                f"{manifest.root} has {len(manifest.shards)} shards for {world_size} ranks; pack with fewer images per shard"
            )
        self.rank_shards = manifest.shards[rank::world_size]
        self.rank = rank
        self.splits = max(1, num_workers)  # num_workers = 0 reads everything in the main process
        self.transform = train_transform(image_size, augment)
        self.tokenizer = CLIPTokenizer(context_length)
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches_per_epoch(self, batch_size: int) -> int:
        """Full batches this rank yields per epoch: each worker drops its own last partial batch."""
        return sum(
            sum(s.captions for s in self.rank_shards[w :: self.splits]) // batch_size for w in range(self.splits)
        )

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        shards = list(self.rank_shards[worker :: self.splits])
        order = random.Random(_seed(self.seed, self.epoch, self.rank, worker))
        order.shuffle(shards)
        # Augmentations draw from torch's global generator; seed it so a rerun sees the same samples.
        torch.manual_seed(_seed(self.seed, self.epoch, self.rank, worker, 1))
        read_records = wds.tarfile_to_samples(handler=wds.warn_and_continue)
        records = read_records(iter([{"url": str(s.path)} for s in shards]))
        shuffle = wds.filters.shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=order)
        samples = shuffle(self._expand(records))
        for sample in samples:
            image = self._decode(sample)
            if image is not None:
                yield {
                    "image": self.transform(image),
                    "ids": self.tokenizer(sample["text"])[0],
                    "pid": sample["pid"],
                    "caption_id": sample["caption_id"],
                }

    @staticmethod
    def _expand(records):
        """One record per image -> one sample per caption; images stay encoded until drawn."""
        for record in records:
            try:
                meta = json.loads(record["json"])
                image_bytes = next(record[k] for k in set(IMAGE_SUFFIXES.values()) if k in record)
            except (KeyError, StopIteration, json.JSONDecodeError, UnicodeDecodeError):
                log.warning("skipping malformed record %s in %s", record.get("__key__"), record.get("__url__"))
                continue
            for caption in meta["captions"]:
                yield {
                    "key": record["__key__"],
                    "image_bytes": image_bytes,
                    "text": caption["text"],
                    "pid": meta["pid"],
                    "caption_id": caption["caption_id"],
                }

    @staticmethod
    def _decode(sample: dict) -> Image.Image | None:
        try:
            with Image.open(io.BytesIO(sample["image_bytes"])) as image:
                return image.convert("RGB")
        except (OSError, ValueError):
            log.warning("skipping undecodable image in sample %s", sample["key"])
            return None


def make_loader(stream: CaptionSampleStream, *, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers, drop_last=True, persistent_workers=False)
