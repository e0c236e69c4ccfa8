"""How random are the training batches? One epoch of the real readers, measured against a uniform shuffle.

    python -m benchmarks.benchmark_batch_composition --shards DIR --world-size W --workers K --batch-size B
    python -m benchmarks.benchmark_batch_composition --simulate 100000 --world-size 8 --workers 8 --batch-size 64
    python -m benchmarks.benchmark_batch_composition --simulate-finetune --world-size 1 --workers 8 --batch-size 64

The batches are the ones training would see: every rank's CaptionSampleStream (data/caption_stream.py) yields each worker's
sample sequence, cut into batches of B, the workers delivering in turn; global batch s is batch s of every rank.
Images are never decoded. `--simulate N` replaces the shards by a metadata-only stand-in of a LUPerson-MLLM pack of
N images (4 captions each, every caption a sample; names sorted as video frames would be, packed in data.pack's
seeded random order); `--simulate-finetune` by a CUHK-PEDES-sized train split whose annotation file lists each
identity's images together (34,054 images of 11,003 identities, 2 captions each), packed as data.pack_dataset
packs it. Reported over the epoch, each next to the same measure for a uniform random permutation of the same
samples into global batches of the same size:
- same image: the share of samples whose image has another caption in the same global batch;
- name neighbour: the share of samples whose image's neighbour in sorted file-name order (+-1, a proxy for the same
  video) has a sample in the same global batch;
- same pid: the share of samples whose identity has another sample in the batch (fine-tuning's false negatives are
  not these, but IRRA draws captions uniformly, so the rate should be uniform's);
- median span: the median over global batches of (largest - smallest) sorted file-name position, and the same
  over one rank's batches (what a rank's batch covers, whatever the other ranks read).
The bar: each share at most 1.5x uniform, each span at least uniform / 1.5.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from data.caption_stream import CaptionSample, CaptionSampleStream
from data.cli_errors import error_boundary
from data.manifest import Manifest, ShardInfo
from data.order import image_permutation
from data.outputs import check_output_file, output_argument, write_text_atomically
from data.records import MDSShards, RawRecord, read_wds_shard
from engine.config import AugmentConfig

BAR = 1.5
LUPERSON_SOURCES = ["Ts-qwen", "Ts-shikra", "Td-qwen", "Td-shikra"]


class SimulatedStream(CaptionSampleStream):
    """The real reader over records made from metadata: `shard_metas[i]` lists shard i's record metas."""

    def __init__(self, manifest: Manifest, shard_metas: list[list[dict]], **kwargs) -> None:
        super().__init__(manifest, **kwargs)
        self.shard_metas = shard_metas

    def _shard_records(self, index: int, mds: MDSShards | None) -> Iterator[RawRecord]:
        for meta in self.shard_metas[index]:
            texts = b"\n".join(f"caption {c['caption_id']}".encode() for c in meta["captions"])
            yield RawRecord(f"{meta['image_index']:09d}", b"", json.dumps(meta).encode(), texts)


def simulated_pack(
    sorted_names: list[str], pids: list[int], captions_per_image: list[int], *, images_per_shard: int, seed: int
) -> tuple[Manifest, list[list[dict]]]:
    """What data.pack (or data.pack_dataset) writes for these inputs, as a manifest and per-shard record metas."""
    sources = max(captions_per_image)
    order = image_permutation(len(sorted_names), seed)
    metas = [
        {
            "pid": pids[i],
            "image": sorted_names[i],
            "image_index": k,
            "captions": [{"source": f"s{j}", "caption_id": k * sources + j} for j in range(captions_per_image[i])],
        }
        for k, i in enumerate(order)
    ]
    shard_metas = [metas[s : s + images_per_shard] for s in range(0, len(metas), images_per_shard)]
    shards = [
        ShardInfo(Path(f"simulated/shard-{i:06d}.tar"), len(m), sum(len(x["captions"]) for x in m))
        for i, m in enumerate(shard_metas)
    ]
    manifest = Manifest(Path("simulated"), [f"s{j}" for j in range(sources)], len(metas), len(metas) * sources, shards)
    return manifest, shard_metas


def read_metas(manifest: Manifest) -> list[list[dict]]:
    """Every shard's record metas, read from the shards themselves (images are not decoded)."""
    mds = MDSShards(manifest.root) if manifest.format == "mds" else None
    shard_metas = []
    for shard in manifest.shards:
        records = mds.read(shard.path.name) if mds else read_wds_shard(shard.path)
        shard_metas.append([json.loads(r.meta) for r in records if isinstance(r, RawRecord)])
    return shard_metas


def epoch_batches(
    streams: list[CaptionSampleStream], *, workers: int, batch_size: int
) -> list[list[list[CaptionSample]]]:
    """Global batches of one epoch, each a list of the ranks' batches: each rank's workers deliver batches in turn,
    and every rank stops with the rank that has the fewest (what the trainer's agreement on the epoch length does)."""
    per_rank = []
    for stream in streams:
        per_worker = []
        for worker in range(max(1, workers)):
            samples = [s for s in stream.sequence(worker) if isinstance(s, CaptionSample)]
            per_worker.append(
                [samples[i : i + batch_size] for i in range(0, len(samples) - batch_size + 1, batch_size)]
            )
        delivered, turn = [], 0
        while any(per_worker):  # the DataLoader's in-order round robin; an exhausted worker is skipped
            if per_worker[turn % len(per_worker)]:
                delivered.append(per_worker[turn % len(per_worker)].pop(0))
            turn += 1
        per_rank.append(delivered)
    steps = min(len(d) for d in per_rank)
    return [[rank[step] for rank in per_rank] for step in range(steps)]


def measures(steps: list[list[list[tuple[int, int]]]]) -> dict[str, float]:
    """Global batches, each a list of rank batches of (sorted name position, pid) -> the measures."""
    same_image = neighbour = same_pid = total = 0
    spans, rank_spans = [], []
    for ranks in steps:
        batch = [sample for rank in ranks for sample in rank]
        rank_spans += [max(p for p, _ in rank) - min(p for p, _ in rank) for rank in ranks]
        images = Counter(position for position, _ in batch)
        pids = Counter(pid for _, pid in batch)
        for position, pid in batch:
            same_image += images[position] > 1
            neighbour += (position - 1 in images) or (position + 1 in images)
            same_pid += pids[pid] > 1
        total += len(batch)
        positions = [p for p, _ in batch]
        spans.append(max(positions) - min(positions))
    return {
        "same_image": same_image / max(total, 1),
        "name_neighbour": neighbour / max(total, 1),
        "same_pid": same_pid / max(total, 1),
        "median_span": statistics.median(spans) if spans else 0.0,
        "median_rank_span": statistics.median(rank_spans) if rank_spans else 0.0,
    }


def uniform_batches(samples: list[tuple[int, int]], *, ranks: int, batch_size: int, steps: int, seed: int) -> list:
    """A uniform random permutation of the samples, cut into `steps` global batches of `ranks` rank batches."""
    shuffled = list(samples)
    random.Random(seed).shuffle(shuffled)
    chunks = [shuffled[i * batch_size : (i + 1) * batch_size] for i in range(steps * ranks)]
    return [chunks[i * ranks : (i + 1) * ranks] for i in range(steps)]


def run(args: argparse.Namespace) -> dict:
    if args.simulate:
        count = args.simulate
        names = [f"{i:08d}.jpg" for i in range(count)]  # sorted order groups frames of one video
        manifest, shard_metas = simulated_pack(
            names, list(range(count)), [4] * count, images_per_shard=args.images_per_shard, seed=args.seed
        )
    elif args.simulate_finetune:
        ids, count = 11003, 34054
        pids = sorted(i % ids for i in range(count))  # the annotation file lists an identity's images together
        names = [f"{pid:05d}_{i:06d}.jpg" for i, pid in enumerate(pids)]
        manifest, shard_metas = simulated_pack(
            names, pids, [2] * count, images_per_shard=args.images_per_shard, seed=args.seed
        )
    else:
        manifest = Manifest.load(args.shards)
        shard_metas = read_metas(manifest)
    sorted_names = sorted(m["image"] for metas in shard_metas for m in metas)
    position = {name: i for i, name in enumerate(sorted_names)}
    where = {m["image_index"]: position[m["image"]] for metas in shard_metas for m in metas}
    common = dict(
        world_size=args.world_size,
        num_workers=args.workers,
        batch_size=args.batch_size,
        image_size=(32, 16),
        augment=AugmentConfig(),
        context_length=16,
        seed=args.seed,
        shuffle_buffer=args.shuffle_buffer,
        sampling=args.sampling,
        interleave_shards=args.interleave_shards,
        spread_captions=not args.no_spread_captions,
    )
    started = time.perf_counter()
    streams = []
    for rank in range(args.world_size):
        stream = (
            SimulatedStream(manifest, shard_metas, rank=rank, **common)
            if args.simulate or args.simulate_finetune
            else CaptionSampleStream(manifest, rank=rank, **common)
        )
        stream.set_epoch(args.epoch)
        streams.append(stream)
    sources = len(manifest.sources)
    batches = epoch_batches(streams, workers=args.workers, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    reader = [[[(where[s.caption_id // sources], s.pid) for s in rank] for rank in step] for step in batches]
    every_sample = [(where[m["image_index"]], m["pid"]) for metas in shard_metas for m in metas for _ in m["captions"]]
    if args.sampling == "one_caption_per_image":
        every_sample = [(where[m["image_index"]], m["pid"]) for metas in shard_metas for m in metas]
    global_batch = args.world_size * args.batch_size
    uniform = uniform_batches(
        every_sample, ranks=args.world_size, batch_size=args.batch_size, steps=len(batches), seed=args.seed + 1
    )
    return {
        "images": len(sorted_names),
        "shards": len(manifest.shards),
        "global_batches": len(batches),
        "global_batch": global_batch,
        "reader": measures(reader),
        "uniform": measures(uniform),
        "reader_seconds": seconds,
    }


def report(result: dict) -> bool:
    reader, uniform = result["reader"], result["uniform"]
    print(
        f"{result['images']} images in {result['shards']} shards, {result['global_batches']} global batches of "
        f"{result['global_batch']} (readers: {result['reader_seconds']:.1f} s)"
    )
    print(f"{'measure':<34}{'readers':>10}{'uniform':>10}{'ratio':>8}  bar")
    passed = True
    rows = [
        ("same image in global batch (%)", "same_image", 100.0, False),
        ("name neighbour in global batch (%)", "name_neighbour", 100.0, False),
        ("same pid in global batch (%)", "same_pid", 100.0, False),
        ("median span, global batch", "median_span", 1.0, True),
        ("median span, one rank's batch", "median_rank_span", 1.0, True),
    ]
    for label, key, scale, higher_is_better in rows:
        ratio = reader[key] / uniform[key] if uniform[key] else float("inf") if reader[key] else 1.0
        ok = ratio >= 1 / BAR if higher_is_better else ratio <= BAR
        passed &= ok
        bar = f">= {1 / BAR:.2f}x" if higher_is_better else f"<= {BAR:.1f}x"
        print(
            f"{label:<34}{reader[key] * scale:>10.3f}{uniform[key] * scale:>10.3f}{ratio:>7.2f}x  {bar} "
            f"{'ok' if ok else 'MISSED'}"
        )
    return passed


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.benchmark_batch_composition", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--shards", type=Path, help="a packed shard folder (manifest.json)")
    source.add_argument("--simulate", type=int, help="a metadata-only LUPerson-MLLM pack of this many images")
    source.add_argument("--simulate-finetune", action="store_true", help="a metadata-only CUHK-PEDES train split")
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True, help="DataLoader workers per rank")
    parser.add_argument("--batch-size", type=int, required=True, help="per rank")
    parser.add_argument("--images-per-shard", type=int, default=500, help="simulated packs only")
    parser.add_argument("--shuffle-buffer", type=int, default=2000, help="data.shuffle_buffer")
    parser.add_argument("--interleave-shards", type=int, default=4, help="data.interleave_shards")
    parser.add_argument("--no-spread-captions", action="store_true", help="data.spread_captions=false")
    parser.add_argument("--sampling", default="every_caption", choices=["every_caption", "one_caption_per_image"])
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    output_argument(parser, "--json", kind="file", help="also write the figures here (must not exist)")
    args = parser.parse_args(argv)
    if args.json:
        check_output_file(args.json, flag="--json", protect=[args.shards])  # before the work
    result = run(args)
    passed = report(result)
    if args.json:
        write_text_atomically(args.json, json.dumps(result, indent=1))
    print("bar met" if passed else "bar MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
