"""Peak memory of one data worker's view of a 4 M-caption LUPerson-MLLM set, against the reference layout.

    python -m benchmarks.benchmark_data_memory [--images 1000000] [--images-per-shard 1000] [--ranks 8]

Metadata only: the shard files are empty placeholders, and the captions are generated text of LUPerson
length. Ours: what a rank and each of its workers hold to stream an epoch (the manifest, the epoch's
shard assignment, the caption ids the noise table fetches, the data position with its bitmap of captions
seen). Reference layout: the four caption JSON files loaded into memory, plus the (image, caption) list
every worker of the reference implementation holds. Each case runs in a fresh process; peak RSS is
measured above what the process held after its imports."""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.fresh_process import peak_rss_mb, run_in_fresh_process
from data.cli_errors import error_boundary

SOURCES = ("Ts-qwen", "Ts-shikra", "Td-qwen", "Td-shikra")
WORDS = [
    "a",
    "man",
    "woman",
    "wearing",
    "black",
    "white",
    "red",
    "blue",
    "shirt",
    "jacket",
    "pants",
    "shorts",
    "shoes",
    "bag",
    "with",
    "long",
    "short",
    "hair",
]


def write_metadata(root: Path, images: int, per_shard: int) -> None:
    """manifest.json over empty shard files, and four caption files of `images` captions each."""
    shards = []
    for index, start in enumerate(range(0, images, per_shard)):
        name = f"shard-{index:06d}.tar"
        (root / name).touch()
        count = min(per_shard, images - start)
        shards.append({"name": name, "images": count, "captions": 4 * count, "sha256": "0" * 64})
    manifest = {"format": "wds", "sources": list(SOURCES), "num_images": images, "num_captions": 4 * images}
    manifest |= {"caption_id_space": 4 * images, "shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest))
    rng = random.Random(0)
    for source in SOURCES:
        with (root / f"{source}.json").open("w") as handle:
            handle.write("{")
            for i in range(images):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40)))  # ~40 tokens, as LUPerson-MLLM
                handle.write(f'{"," if i else ""}"{i:08d}.jpg": "{text}"')
            handle.write("}")


def _ours(root: str, ranks: int, results) -> None:
    from data.caption_stream import PROBLEMS, CaptionSampleStream
    from data.manifest import Manifest
    from data.position import DataPosition
    from engine.config import AugmentConfig

    before = peak_rss_mb()
    started = time.perf_counter()
    manifest = Manifest.load(root)
    stream = CaptionSampleStream(
        manifest,
        rank=0,
        world_size=ranks,
        num_workers=8,
        batch_size=64,
        image_size=(384, 128),
        augment=AugmentConfig(),
        context_length=77,
        seed=0,
        shuffle_buffer=2000,
    )
    batches = stream.batches_per_epoch(0)
    ids = stream.caption_ids(0)
    position = DataPosition(stream.splits, manifest.caption_id_space, len(PROBLEMS))
    position.state_dict()
    results.put((time.perf_counter() - started, peak_rss_mb() - before, f"{batches} batches, {len(ids)} ids"))


def _reference(root: str, ranks: int, results) -> None:
    before = peak_rss_mb()
    started = time.perf_counter()
    captions = [json.loads((Path(root) / f"{s}.json").read_text()) for s in SOURCES]
    samples = [(f"imgs/{name}", text, pid) for mapping in captions for pid, (name, text) in enumerate(mapping.items())]
    results.put((time.perf_counter() - started, peak_rss_mb() - before, f"{len(samples)} samples"))


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000, help="x 4 captions")
    parser.add_argument("--images-per-shard", type=int, default=1000)
    parser.add_argument("--ranks", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"writing metadata for {args.images} images x 4 captions ...", flush=True)
        write_metadata(Path(tmp), args.images, args.images_per_shard)
        ours = run_in_fresh_process(_ours, tmp, args.ranks)
        reference = run_in_fresh_process(_reference, tmp, args.ranks)
    print(f"{4 * args.images:,} captions, {args.ranks} ranks; peak RSS above imports, per process")
    print(f"{'layout':<44}{'seconds':>9}{'peak MB':>10}   what it holds")
    for name, (seconds, mb, held) in (
        ("shard manifest + position (ours, per worker)", ours),
        ("caption JSON in memory (reference, baseline)", reference),
    ):
        print(f"{name:<44}{seconds:>9.2f}{mb:>10.1f}   {held}")
    print(f"ours / baseline memory: {ours[1] / max(reference[1], 1e-9):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
