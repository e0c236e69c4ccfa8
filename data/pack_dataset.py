"""Pack a benchmark's train split into training shards with the benchmark's pids, for fine-tuning.

    python -m data.pack_dataset --dataset cuhk-pedes --root DIR --out DIR|s3://BUCKET/PREFIX [--stage DIR] \
        [--split train] [--skip-missing] [--order-seed 0]

The shards have the layout `data.pack` writes for LUPerson-MLLM, so training reads them unchanged; the
difference is that several images share an identity, so SDM's positives are the benchmark's pids. The pids are
stored as contiguous labels 0..K-1 (the k-th smallest benchmark pid becomes k) and the manifest records
`num_identities` K, the classes of IRRA's identity loss (`loss.id_weight`). As `data.pack` does, the images go into
the shards in a seeded random permutation (annotation files list an identity's images together), recorded in the
manifest's `image_order`. With `--out s3://bucket/prefix` the shards are packed into the local folder `--stage` and
uploaded as `data.pack` uploads them (docs/data.md, "Remote shards")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.cli_errors import error_boundary, positive_int
from data.datasets import DATASETS, load_split
from data.object_store import RetryPolicy, redact
from data.order import image_permutation, order_record
from data.pack import ImageItem, add_shard_outputs, check_out, check_remote_out, publish, write_shards


def pack_dataset(
    dataset: str,
    root: str | Path,
    out_dir: Path,
    *,
    split: str = "train",
    images_per_shard: int = 1000,
    skip_missing: bool = False,
    order_seed: int = 0,
) -> dict:
    data = load_split(dataset, root, split, skip_missing=skip_missing)
    per_image: list[list[str]] = [[] for _ in data.image_paths]
    for text, image_index in zip(data.captions, data.caption_image_indices, strict=True):
        per_image[image_index].append(text)
    sources = [f"caption{j}" for j in range(max(len(texts) for texts in per_image))]
    labels = {pid: label for label, pid in enumerate(sorted(set(data.image_pids)))}  # ICFG/RSTP pids have gaps
    items = [
        ImageItem(path, labels[pid], [(j, sources[j], text) for j, text in enumerate(texts)])
        for path, pid, texts in zip(data.image_paths, data.image_pids, per_image, strict=True)
    ]
    image_order = order_record([str(item.path) for item in items], order_seed)  # of the annotation file's order
    items = [items[i] for i in image_permutation(len(items), order_seed)]
    extra = {
        "benchmark": dataset,
        "split": split,
        "identities": len(labels),
        "num_identities": len(labels),  # what data.manifest.Manifest reads
        "missing_images": len(data.missing_images),
        "image_order": image_order,
    }
    return write_shards(items, out_dir, sources=sources, images_per_shard=images_per_shard, extra=extra)


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.pack_dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--root", required=True, help="folder holding the annotation file and imgs/")
    add_shard_outputs(parser)
    parser.add_argument("--split", default="train")
    parser.add_argument("--images-per-shard", type=positive_int, default=1000)
    parser.add_argument("--skip-missing", action="store_true", help="drop images missing on disk, and count them")
    parser.add_argument("--order-seed", type=int, default=0, help="seed of the random image order in the shards")
    args = parser.parse_args(argv)
    remote = args.out if isinstance(args.out, str) else None
    policy = RetryPolicy()
    try:
        inputs = [Path(args.root) / "imgs"]
        if remote is not None:
            check_remote_out(remote, args.stage, inputs=inputs, policy=policy)
        else:
            check_out(args.out, inputs=inputs)
        local = args.stage if remote is not None else args.out
        manifest = pack_dataset(
            args.dataset,
            args.root,
            local,
            split=args.split,
            images_per_shard=args.images_per_shard,
            skip_missing=args.skip_missing,
            order_seed=args.order_seed,
        )
        if remote is not None:
            sent = publish(local, remote, manifest, policy=policy)
            print(f"uploaded {sent} file(s) to {redact(remote)}, manifest.json last", flush=True)
    except ValueError as error:  # DatasetError, OutputError, RemoteUnavailable; CaptionError: another packing in --out
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"packed {manifest['num_images']} images of {manifest['identities']} identities, {manifest['num_captions']} "
        f"captions into {len(manifest['shards'])} shards in {redact(remote) if remote else args.out} ({manifest['missing_images']} missing images skipped)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
