"""Stream training batches from webdataset or MDS shards, resumable at any batch.

Each epoch the shard list is shuffled from (seed, epoch) and dealt to the ranks (shards[rank::world]),
then to the DataLoader workers, so a caption meets a different rank from epoch to epoch (the sharded
noise table follows it). A worker reads several of its shards at once, interleaved, through a shuffle
buffer; with `spread_captions` each caption of an image is read in its own pass over the worker's shards
(data/order.py), so an image's captions rarely share a batch. A worker's samples form one sequence that
depends only on (seed, epoch, rank, worker) and the shard contents; every batch carries its worker and the sequence position after it, so
a checkpoint can say exactly where each worker stands (data/position.py) and a resumed worker skips to
that position without decoding what it passes. Augmentations draw from a generator seeded per sample.

Damaged data never stops the stream: a missing or truncated shard, a malformed record, an empty,
undecodable or truncated image, an empty or non-UTF-8 caption is skipped, logged with its key and
counted in the batch's `problems` (PROBLEMS order); a non-RGB image is converted and counted.

Shards in object storage (`remote`, data/object_store.py) are fetched into the local cache `manifest.root` when first
read and then read like local ones. A store that stays down past the retry policy ends the worker's stream with a
`halt` item naming the endpoint and the shard: the trainer checkpoints what it trained and stops, losing nothing."""

from __future__ import annotations

import io
import itertools
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.config import AugmentConfig
from data.manifest import Manifest, ShardError
from data.object_store import RemoteUnavailable, RetryPolicy, ShardCache
from data.order import caption_passes, derived_seed, interleave
from data.position import DONE, WorkerStart
from data.records import MDSShards, RawRecord, ShardProblem, read_wds_shard
from data.tokenizer import CaptionTokenizer
from data.transforms import train_transform

log = logging.getLogger(__name__)

SAMPLING = ("every_caption", "one_caption_per_image")
PROBLEMS = (
    "missing_shard",  # counted per shard
    "truncated_shard",  # per shard; the records before the damage are read
    "malformed_record",  # unreadable meta, or captions that do not match it
    "empty_image",
    "undecodable_image",
    "truncated_image",
    "empty_caption",
    "caption_not_utf8",
    "non_rgb_converted",  # not skipped: converted to RGB
    "changed_shard",  # per shard: its bytes are not the ones packed (the manifest's sha256); its records were read
)  # new kinds go last: a checkpoint's counts of the earlier kinds keep their places
SHARD_PROBLEMS = ("missing_shard", "truncated_shard", "changed_shard")
LOGGED_PER_KIND = 20  # warnings per worker, epoch and kind; the counts are always complete


@dataclass(frozen=True)
class CaptionSample:
    key: str
    image: bytes | None
    text: str
    pid: int
    caption_id: int


@dataclass(frozen=True)
class Problem:
    kind: str
    key: str


def expand(
    record: RawRecord, *, sampling: str, seed: int, epoch: int, passes: int = 1, pass_index: int = 0
) -> Iterator[CaptionSample | Problem]:
    """One record -> its caption samples (every caption, or one drawn from (seed, epoch, image)) and the
    problems of its unusable captions. Images stay encoded until a sample is drawn. With `passes` > 1 only the
    captions assigned to `pass_index` come out (a draw from (seed, epoch, image)); a malformed record is reported
    in pass 0 only."""
    try:
        meta = json.loads(record.meta)
        texts = record.captions.split(b"\n")
        entries = meta["captions"]
        if len(texts) != len(entries):
            raise ValueError(f"{len(texts)} caption lines for {len(entries)} captions")
        pid = int(meta["pid"])
    except (TypeError, AttributeError, KeyError, ValueError):  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        if pass_index == 0:
            yield Problem("malformed_record", record.key)
        return
    image_index = int(meta.get("image_index", pid))
    if passes > 1:
        slots = caption_passes(len(entries), passes, random.Random(derived_seed(seed, epoch, image_index, -2)))
        mine = [slot == pass_index for slot in slots]
        entries = [e for e, m in zip(entries, mine, strict=True) if m]
        texts = [t for t, m in zip(texts, mine, strict=True) if m]
    good = []
    for entry, raw in zip(entries, texts, strict=True):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            yield Problem("caption_not_utf8", f"{record.key}/{entry['caption_id']}")
            continue
        if not text:
            yield Problem("empty_caption", f"{record.key}/{entry['caption_id']}")
            continue
        good.append(CaptionSample(record.key, record.image, text, pid, int(entry["caption_id"])))
    if sampling == "one_caption_per_image" and good:
        good = [random.Random(derived_seed(seed, epoch, image_index)).choice(good)]
    yield from good


def decode_image(data: bytes | None) -> tuple[Image.Image | None, str | None]:
    """(RGB image, None), (converted image, "non_rgb_converted") or (None, the problem)."""
    if not data:
        return None, "empty_image"
    try:
        image = Image.open(io.BytesIO(data))
    except (OSError, ValueError):  # PIL.UnidentifiedImageError is an OSError
        return None, "undecodable_image"
    try:
        image.load()
    except (OSError, ValueError, SyntaxError):
        return None, "truncated_image"
    if image.mode != "RGB":
        return image.convert("RGB"), "non_rgb_converted"
    return image, None


class CaptionSampleStream(IterableDataset):
    """Yields batches: image (B, 3, H, W) float32, ids (B, N) int64, pid and caption_id (B,) int64,
    worker, end (the worker's sequence position after this batch) and problems (len(PROBLEMS),) int64;
    each worker ends with a tail item {"tail": True, worker, end=DONE, problems, dropped} carrying the
    counts after its last full batch and the size of the partial batch it dropped, or, when the remote store stays
    down, with {"halt": message, worker} (nothing after its last batch is counted: a resume reads it again)."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        rank: int,
        world_size: int,
        num_workers: int,
        batch_size: int,
        image_size: tuple[int, int],
        augment: AugmentConfig,
        context_length: int,
        seed: int,
        shuffle_buffer: int,
        sampling: str = "every_caption",
        remote: str | None = None,
        fetch_policy: RetryPolicy | None = None,
        interleave_shards: int = 4,
        spread_captions: bool = True,
    ) -> None:
        if len(manifest.shards) < world_size:
            raise ShardError(
                f"{manifest.root} has {len(manifest.shards)} shards for {world_size} ranks; pack with fewer images per shard"
            )
        if sampling not in SAMPLING:
            raise ShardError(f"data.sampling must be one of {', '.join(SAMPLING)} (got {sampling!r})")
        self.manifest = manifest
        self.cache = ShardCache(remote, manifest.root, fetch_policy) if remote is not None else None
        self.rank, self.world_size = rank, world_size
        self.splits = max(1, num_workers)  # num_workers = 0 reads everything in the main process
        self.batch_size = batch_size
        self.transform = train_transform(image_size, augment)
        self.tokenizer = CaptionTokenizer(context_length)
        self.seed, self.shuffle_buffer, self.sampling = seed, shuffle_buffer, sampling
        self.interleave_shards = interleave_shards
        # every_caption reads the shards once per caption source, each caption in one of those passes
        self.passes = len(manifest.sources) if spread_captions and sampling == "every_caption" else 1
        self.epoch = 0
        self.start = WorkerStart.fresh(self.splits)

    def set_epoch(self, epoch: int, start: WorkerStart | None = None) -> None:
        """The epoch to stream, from the beginning or from a checkpointed position."""
        self.epoch = epoch
        self.start = start or WorkerStart.fresh(self.splits)

    def shard_indices(self, epoch: int, rank: int) -> list[int]:
        """Indices into manifest.shards that `rank` reads in `epoch`."""
        order = list(range(len(self.manifest.shards)))
        random.Random(derived_seed(self.seed, epoch, -1)).shuffle(order)
        return order[rank :: self.world_size]

    def units_per_worker(self, epoch: int) -> list[list[int]]:
        """Per rank, the images (one_caption_per_image) or captions each of its data workers reads in `epoch` by
        the manifest."""
        per_shard = [s.images if self.sampling == "one_caption_per_image" else s.captions for s in self.manifest.shards]
        return [
            [sum(per_shard[i] for i in self.shard_indices(epoch, rank)[w :: self.splits]) for w in range(self.splits)]
            for rank in range(self.world_size)
        ]

    def batches_per_rank(self, epoch: int) -> list[int]:
        """Full batches each rank's data workers can make in `epoch` by the manifest."""
        return [sum(units // self.batch_size for units in workers) for workers in self.units_per_worker(epoch)]

    def batches_per_epoch(self, epoch: int) -> int:
        """Full batches every rank can run in `epoch` by the manifest (the minimum over ranks, alike on
        each rank); damaged data can only make it fewer, which the ranks agree on as they go."""
        return min(self.batches_per_rank(epoch))

    def caption_ids(self, epoch: int) -> torch.Tensor:
        """Every caption id this rank may read in `epoch` (image index * num_sources + source index)."""
        sources = len(self.manifest.sources)
        first_images = self.manifest.first_images
        ranges = [
            torch.arange(first_images[i] * sources, (first_images[i] + self.manifest.shards[i].images) * sources)
            for i in self.shard_indices(epoch, self.rank)
        ]
        return torch.cat(ranges) if ranges else torch.empty(0, dtype=torch.long)

    def _shard_records(self, index: int, mds: MDSShards | None) -> Iterator[RawRecord | ShardProblem]:
        """One shard's records in file order (a ShardProblem where it is missing, ends early or has changed)."""
        info = self.manifest.shards[index]
        if mds:
            yield from mds.read(info.path.name, info.sha256)
            return
        if self.cache is not None and not self.cache.fetch([info.path.name]):
            yield ShardProblem("missing_shard", info.path.name)
            return
        yield from read_wds_shard(info.path, expected_bytes=info.bytes, expected_sha256=info.sha256)

    def sequence(self, worker: int) -> Iterator[CaptionSample | Problem]:
        """The worker's samples for the epoch, in training order; deterministic from (seed, epoch, rank, worker).
        Per pass: its shards in a fresh random order, `interleave_shards` of them read at once."""
        shards = self.shard_indices(self.epoch, self.rank)[worker :: self.splits]
        order = random.Random(derived_seed(self.seed, self.epoch, self.rank, worker))
        order.shuffle(shards)
        mixing = random.Random(derived_seed(self.seed, self.epoch, self.rank, worker, -3))
        mds = MDSShards(self.manifest.root, self.cache) if self.manifest.format == "mds" else None

        def one_pass(pass_index: int) -> Iterator[CaptionSample | Problem]:
            in_pass = list(shards)
            if pass_index:
                mixing.shuffle(in_pass)
            readers = [self._shard_records(index, mds) for index in in_pass]
            for record in interleave(readers, width=self.interleave_shards, rng=mixing):
                if isinstance(record, ShardProblem):
                    if pass_index == 0:  # a damaged shard is counted once per epoch
                        yield Problem(record.kind, record.key)
                else:
                    yield from expand(
                        record,
                        sampling=self.sampling,
                        seed=self.seed,
                        epoch=self.epoch,
                        passes=self.passes,
                        pass_index=pass_index,
                    )

        # One shuffle buffer per pass, emptied at its end: a buffer reaching into the next pass would bring an
        # image's captions back together.
        shuffle = wds.filters.shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=order)
        return itertools.chain.from_iterable(shuffle(one_pass(k)) for k in range(self.passes))

    def __iter__(self):
        info = get_worker_info()
        worker = self.start.logical_worker(info.id if info is not None else 0)
        start, seen = self.start.positions[worker], self.start.seen
        if start == DONE:  # this worker's tail was consumed before the checkpoint
            return
        batch: list[dict] = []
        problems = torch.zeros(len(PROBLEMS), dtype=torch.long)
        logged = torch.zeros(len(PROBLEMS), dtype=torch.long)

        def note(kind: str, key: str) -> None:
            index = PROBLEMS.index(kind)
            problems[index] += 1
            logged[index] += 1
            if logged[index] <= LOGGED_PER_KIND:
                log.warning("data: %s at %s (epoch %d, rank %d)", kind, key, self.epoch, self.rank)
            if kind in SHARD_PROBLEMS:  # once per shard and epoch: name it where a user looks, so it can be repacked
                print(f"data: {kind} {key} (epoch {self.epoch}, rank {self.rank}); repack it", flush=True)

        try:
            for position, item in enumerate(self.sequence(worker)):
                if position < start:  # resuming: already trained on before the checkpoint; not decoded
                    continue
                if isinstance(item, Problem):
                    note(item.kind, item.key)
                    continue
                if seen is not None and seen[item.caption_id]:  # trained on before a resume onto another layout
                    continue
                image, problem = decode_image(item.image)
                if problem:
                    note(problem, item.key)
                if image is None:
                    continue
                # Augmentation replays on resume. Only the CPU generator: torch.manual_seed would also queue a
                # lazy CUDA seeding with a captured stack trace, costing milliseconds per sample.
                torch.random.default_generator.manual_seed(derived_seed(self.seed, self.epoch, item.caption_id))
                batch.append(
                    {
                        "image": self.transform(image),
                        "ids": self.tokenizer(item.text)[0],
                        "pid": item.pid,
                        "caption_id": item.caption_id,
                    }
                )
                if len(batch) == self.batch_size:
                    yield {
                        **torch.utils.data.default_collate(batch),
                        "worker": worker,
                        "end": position + 1,
                        "problems": problems.clone(),
                    }
                    batch = []
                    problems.zero_()
        except RemoteUnavailable as error:  # the store stayed down: stop here; a resume reads the rest
            log.error("data: %s (epoch %d, rank %d)", error, self.epoch, self.rank)
            yield {"halt": str(error), "worker": worker}
            return
        yield {"tail": True, "worker": worker, "end": DONE, "problems": problems.clone(), "dropped": len(batch)}


def make_loader(stream: CaptionSampleStream, *, num_workers: int) -> DataLoader:
    """Batches come from the workers in turn (in order), which is what lets a resume replay the order."""
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=False)
