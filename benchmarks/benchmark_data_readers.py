"""Samples/s of one data worker (decode + augment + tokenize) on the same images in three layouts.

    python -m benchmarks.benchmark_data_readers [--images 400] [--image-size 384 128] [--repeats 2]

Layouts: the reference implementation's folder of images plus four caption JSON files loaded into
memory (the baseline: one PIL open from disk per sample), webdataset tar shards, and MDS shards read
through mosaicml-streaming. Each is timed in the main process (num_workers=0, one torch thread),
which is what one DataLoader worker does; the figures are ratios to the baseline in the same run."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import default_collate

from data.caption_stream import CaptionSampleStream, make_loader
from data.cli_errors import error_boundary
from data.manifest import Manifest
from data.object_store import RetryPolicy
from data.pack import pack
from data.synthetic import generate
from data.tokenizer import CaptionTokenizer
from data.transforms import train_transform
from engine.config import AugmentConfig

SOURCES = ("Ts-qwen", "Ts-shikra", "Td-qwen", "Td-shikra")
BATCH = 16


def folder_and_json(raw: Path, image_size: tuple[int, int]) -> float:
    """The reference layout: every caption a sample, batched; returns samples/s."""
    captions = [json.loads((raw / f"{s}.json").read_text()) for s in SOURCES]
    samples = [(raw / "imgs" / name, text) for mapping in captions for name, text in mapping.items()]
    transform, tokenizer = train_transform(image_size, AugmentConfig()), CaptionTokenizer(77)
    started, batch = time.perf_counter(), []
    for pid, (path, text) in enumerate(samples):
        with Image.open(path) as image:
            batch.append({"image": transform(image.convert("RGB")), "ids": tokenizer(text)[0], "pid": pid})
        if len(batch) == BATCH:  # batched like the DataLoader batches it
            default_collate(batch)
            batch = []
    return len(samples) / (time.perf_counter() - started)


def shards(
    folder: Path, image_size: tuple[int, int], *, remote: str | None = None, policy: RetryPolicy | None = None
) -> float:
    """Samples/s of one pass over the shards by one worker, the manifest's reading included; with `remote`,
    `folder` is its local cache (benchmarks/benchmark_remote_shards.py)."""
    started = time.perf_counter()
    data = CaptionSampleStream(
        Manifest.load(folder, remote=remote, policy=policy),
        rank=0,
        world_size=1,
        num_workers=0,
        batch_size=BATCH,
        image_size=image_size,
        augment=AugmentConfig(),
        context_length=77,
        seed=0,
        shuffle_buffer=256,
        remote=remote,
        fetch_policy=policy,
    )
    samples = 0
    for item in make_loader(data, num_workers=0):
        samples += 0 if item.get("tail") else len(item["caption_id"])
    return samples / (time.perf_counter() - started)


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--image-size", type=int, nargs=2, default=[384, 128])
    parser.add_argument("--repeats", type=int, default=2, help="the best of N passes is reported")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    size = tuple(args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "synthetic", seed=0, train_images=args.images, test_identities=2, progress=False)
        raw = root / "synthetic" / "luperson_mllm"
        for fmt in ("wds", "mds"):
            pack(raw / "imgs", [raw / f"{s}.json" for s in SOURCES], root / fmt, images_per_shard=100, fmt=fmt)
        rates = {
            "folder + JSON (baseline)": max(folder_and_json(raw, size) for _ in range(args.repeats)),
            "webdataset tar shards": max(shards(root / "wds", size) for _ in range(args.repeats)),
            "MDS shards (streaming)": max(shards(root / "mds", size) for _ in range(args.repeats)),
        }
    baseline = rates["folder + JSON (baseline)"]
    print(f"one data worker, {args.images} images x 4 captions, {size[0]}x{size[1]}, decode + augment + tokenize")
    print(f"{'layout':<28}{'samples/s':>12}{'vs baseline':>14}")
    for name, rate in rates.items():
        print(f"{name:<28}{rate:>12.1f}{rate / baseline:>13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
