"""Pack an image folder and LUPerson-MLLM caption files into webdataset shards plus a manifest.

    python -m data.pack --images DIR --captions Ts-qwen.json Ts-shikra.json Td-qwen.json Td-shikra.json \
        --out DIR [--images-per-shard 1000]

One record per image: the original image bytes and a JSON with its pid, file name and captions, each
with its source and a stable global caption id (image index * num_sources + source index; for
LUPerson the image index is the pid, as every image is its own identity)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from data.captions import CaptionError, load_captions
from data.manifest import MANIFEST

IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}
LISTED_LIMIT = 100  # names listed in the manifest per problem kind; the counts are always complete


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ImageItem:
    """One image to pack: its identity and its captions, each with the index of its source."""

    path: Path
    pid: int
    captions: list[tuple[int, str, str]]  # (source index, source name, text)


def _record(image_index: int, item: ImageItem, num_sources: int) -> dict:
    """Caption ids are image_index * num_sources + source index: stable, dense and known from the manifest."""
    captions = [
        {"text": text, "source": source, "caption_id": image_index * num_sources + source_index}
        for source_index, source, text in item.captions
    ]
    meta = {"pid": item.pid, "image": item.path.name, "captions": captions}
    suffix = IMAGE_SUFFIXES[item.path.suffix.lower()]
    return {"__key__": f"{image_index:09d}", suffix: item.path.read_bytes(), "json": meta}


def _write_shard(out_dir: Path, index: int, items: list[ImageItem], first_image: int, num_sources: int) -> dict:
    name = f"shard-{index:06d}.tar"
    partial = out_dir / f".{name}.partial"
    with partial.open("wb") as handle, wds.TarWriter(handle) as writer:
        for offset, item in enumerate(items):
            writer.write(_record(first_image + offset, item, num_sources))
    os.replace(partial, out_dir / name)  # a shard is either complete or absent
    captions = sum(len(item.captions) for item in items)
    return {"name": name, "images": len(items), "captions": captions, "sha256": _sha256(out_dir / name)}


def write_shards(
    items: list[ImageItem], out_dir: Path, *, sources: list[str], images_per_shard: int, extra: dict
) -> dict:
    """Shards of `images_per_shard` images and the manifest (written last, atomically); returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    progress = tqdm(total=len(items), desc="packing", unit="img", mininterval=2.0)
    for index, start in enumerate(range(0, len(items), images_per_shard)):
        chunk = items[start : start + images_per_shard]
        shards.append(_write_shard(out_dir, index, chunk, start, len(sources)))
        progress.update(len(chunk))
    progress.close()
    manifest = {
        "format": "wds",
        "sources": sources,
        "num_images": len(items),
        "num_captions": sum(s["captions"] for s in shards),
        "caption_id_space": len(items) * len(sources),
        "shards": shards,
        **extra,
    }
    partial = out_dir / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=1))
    os.replace(partial, out_dir / MANIFEST)
    return manifest


def pack(images_dir: Path, caption_files: list[Path], out_dir: Path, *, images_per_shard: int = 1000) -> dict:
    if not images_dir.is_dir():
        raise CaptionError(f"image folder not found: {images_dir}")
    caption_set = load_captions(caption_files)
    on_disk = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    packed = [p for p in on_disk if any(t is not None for t in caption_set.captions.get(p.name, ()))]
    without_captions = sorted({p.name for p in on_disk} - {p.name for p in packed})
    without_images = sorted(set(caption_set.captions) - {p.name for p in on_disk})
    if not packed:
        raise CaptionError(f"no image in {images_dir} has a caption in {', '.join(map(str, caption_files))}")

    # LUPerson: every image is its own identity, so the pid is the image's index.
    names = [source.name for source in caption_set.sources]
    items = [
        ImageItem(
            path,
            pid,
            [(i, names[i], text) for i, text in enumerate(caption_set.captions[path.name]) if text is not None],
        )
        for pid, path in enumerate(packed)
    ]
    extra = {
        "images_without_captions": {"count": len(without_captions), "names": without_captions[:LISTED_LIMIT]},
        "captions_without_images": {"count": len(without_images), "names": without_images[:LISTED_LIMIT]},
        "dirty_captions_replaced": len(caption_set.dirty_replaced),
        "dirty_captions_dropped": len(caption_set.dirty_unreplaceable),
    }
    return write_shards(items, out_dir, sources=names, images_per_shard=images_per_shard, extra=extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.pack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--captions", type=Path, nargs="+", required=True, help="caption JSON files")
    parser.add_argument("--out", type=Path, required=True, help="output folder for shards and manifest.json")
    parser.add_argument("--format", choices=["wds"], default="wds", help="shard format (webdataset tar)")
    parser.add_argument("--images-per-shard", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.images_per_shard <= 0:
        parser.error(f"--images-per-shard must be > 0 (got {args.images_per_shard})")
    try:
        manifest = pack(args.images, args.captions, args.out, images_per_shard=args.images_per_shard)
    except CaptionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"packed {manifest['num_images']} images, {manifest['num_captions']} captions into "
        f"{len(manifest['shards'])} shards in {args.out}; dirty captions replaced: {manifest['dirty_captions_replaced']}, "
        f"dropped: {manifest['dirty_captions_dropped']}; images without captions: "
        f"{manifest['images_without_captions']['count']}; captions without images: {manifest['captions_without_images']['count']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
