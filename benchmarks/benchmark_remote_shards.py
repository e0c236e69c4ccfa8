"""Samples/s of one data worker reading the same shards from a local folder and from an S3 server (cold and warm
cache).

    python -m benchmarks.benchmark_remote_shards [--images 400] [--image-size 384 128] [--format wds mds] [--repeats 2]

The S3 server is moto's, started here on 127.0.0.1 (benchmarks/s3_server.py): it measures the client's side of a
remote folder (boto3 or mosaicml-streaming's downloader, a fetch per shard under a lock, the rename into the cache),
not a network. Cold: an empty cache, so every shard is fetched when the worker first reads it; warm: the same cache
read again, which fetches nothing. Each is timed in the main process (num_workers=0, one torch thread), which is what
one DataLoader worker does; the figures are ratios to the local folder in the same run."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from benchmarks.benchmark_data_readers import shards
from benchmarks.s3_server import S3Server, client_environment
from data.cli_errors import error_boundary
from data.object_store import RetryPolicy, s3_client
from data.pack import pack, publish
from data.synthetic import generate

SOURCES = ("Ts-qwen", "Ts-shikra", "Td-qwen", "Td-shikra")
BUCKET = "shards"
POLICY = RetryPolicy(attempts=3, first_wait_s=0.5, timeout_s=60.0)  # a local server: a failure is a bug, not a wait


def samples_per_s(folder: Path, image_size: tuple[int, int], *, remote: str | None = None) -> float:
    return shards(folder, image_size, remote=remote, policy=POLICY)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def measure(root: Path, manifest: dict, image_size: tuple[int, int], repeats: int) -> dict[str, float]:
    """Best-of-`repeats` samples/s of the local folder, the cold cache and the warm cache; the server is up."""
    fmt = manifest["format"]
    local, remote = root / fmt, f"s3://{BUCKET}/{fmt}"
    publish(local, remote, manifest, policy=POLICY)
    rates = {"local": max(samples_per_s(local, image_size) for _ in range(repeats))}
    cold = [samples_per_s(root / f"cache-{fmt}-{k}", image_size, remote=remote) for k in range(repeats)]
    rates["cold"] = max(cold)
    cache = root / f"cache-{fmt}-{repeats - 1}"
    rates["warm"] = max(samples_per_s(cache, image_size, remote=remote) for _ in range(repeats))
    return rates


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--image-size", type=int, nargs=2, default=[384, 128])
    parser.add_argument("--format", nargs="+", choices=("wds", "mds"), default=["wds", "mds"])
    parser.add_argument("--repeats", type=int, default=2, help="the best of N passes is reported (N cold caches)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    size = tuple(args.image_size)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "synthetic", seed=0, train_images=args.images, test_identities=2, progress=False)
        raw = root / "synthetic" / "luperson_mllm"
        captions = [raw / f"{s}.json" for s in SOURCES]
        manifests = {
            fmt: pack(raw / "imgs", captions, root / fmt, images_per_shard=100, fmt=fmt) for fmt in args.format
        }
        server = S3Server(lifetime_s=24 * 3600.0, max_requests=10**7)
        with server, environment(client_environment(server.endpoint, root, secret="benchmark-secret")):
            s3_client().create_bucket(Bucket=BUCKET)
            for fmt in args.format:
                results[fmt] = measure(root, manifests[fmt], size, args.repeats)
    print(f"one data worker, {args.images} images x 4 captions, {size[0]}x{size[1]}, shards of 100 images, "
          f"S3: moto on 127.0.0.1")  # fmt: skip
    print(f"{'format':<8}{'local /s':>10}{'S3 cold /s':>12}{'cold/local':>12}{'S3 warm /s':>12}{'warm/local':>12}")
    for fmt, rates in results.items():
        print(
            f"{fmt:<8}{rates['local']:>10.1f}{rates['cold']:>12.1f}{rates['cold'] / rates['local']:>11.2f}x"
            f"{rates['warm']:>12.1f}{rates['warm'] / rates['local']:>11.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
