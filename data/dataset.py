"""Stream training samples from webdataset shards: one sample per caption (the reference choice).

Each epoch the shard list is shuffled from (seed, epoch) and dealt to the ranks (shards[rank::world]),
then to the DataLoader workers, so a caption meets a different rank from epoch to epoch (the sharded
noise table follows it). Everything is deterministic from (seed, epoch, rank, worker). Every sample is (image tensor, token ids, pid, global caption id)."""

from __future__ import annotations

import io
import json
import logging
import random

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.manifest import Manifest, ShardError
from data.pack import IMAGE_SUFFIXES
from data.transforms import train_transform
from engine.config import AugmentConfig
from engine.tokenizer import CLIPTokenizer

log = logging.getLogger(__name__)


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
        self.manifest = manifest
        self.rank, self.world_size = rank, world_size
        self.splits = max(1, num_workers)  # num_workers = 0 reads everything in the main process
        self.transform = train_transform(image_size, augment)
        self.tokenizer = CLIPTokenizer(context_length)
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard_indices(self, epoch: int, rank: int) -> list[int]:
        """Indices into manifest.shards that `rank` reads in `epoch`."""
        order = list(range(len(self.manifest.shards)))
        random.Random(_seed(self.seed, epoch, -1)).shuffle(order)
        return order[rank :: self.world_size]

    def batches_per_epoch(self, batch_size: int, epoch: int) -> int:
        """Full batches every rank can run in `epoch` (the minimum over ranks, computed alike on each rank);
        each DataLoader worker drops its own last partial batch."""

        def rank_batches(rank: int) -> int:
            shards = self.shard_indices(epoch, rank)
            per_worker = [shards[w :: self.splits] for w in range(self.splits)]
            return sum(sum(self.manifest.shards[i].captions for i in part) // batch_size for part in per_worker)

        return min(rank_batches(rank) for rank in range(self.world_size))

    def caption_ids(self, epoch: int) -> torch.Tensor:
        """Every caption id this rank may read in `epoch` (image index * num_sources + source index)."""
        sources = len(self.manifest.sources)
        first_images = self.manifest.first_images
        ranges = [
            torch.arange(first_images[i] * sources, (first_images[i] + self.manifest.shards[i].images) * sources)
            for i in self.shard_indices(epoch, self.rank)
        ]
        return torch.cat(ranges) if ranges else torch.empty(0, dtype=torch.long)

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        shards = [self.manifest.shards[i] for i in self.shard_indices(self.epoch, self.rank)[worker :: self.splits]]
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
