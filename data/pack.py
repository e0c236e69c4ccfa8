"""Pack an image folder and LUPerson-MLLM caption files into webdataset or MDS shards plus a manifest.

    python -m data.pack --images DIR --captions Ts-qwen.json Ts-shikra.json Td-qwen.json Td-shikra.json \
        --out DIR|s3://BUCKET/PREFIX [--stage DIR] [--format wds|mds] [--shard-size 256MB | --images-per-shard N] \
        [--workers 4] [--order-seed 0] [--dirty-captions reference|same_captioner]

One record per image (data/records.py): the original image bytes, its captions, and for each caption its
source and a stable global caption id (image index * num_sources + source index; for LUPerson the image
index is the pid, as every image is its own identity). Images are packed in a seeded random permutation of their
sorted file names (data/order.py; the manifest's `image_order`), never in file-name order, so that a shard is a
random sample of the data set. Dirty captions are replaced by the reference's rule or the same-captioner rule
(data/caption_files.py) and counted per caption file in the manifest. Shards are written in parallel, each atomically,
with a `.done` note beside it; rerunning the same command on an interrupted output packs only the
shards still missing. manifest.json (counts, shard list, sha256 checksums) is written last.

With `--out s3://bucket/prefix` the shards are packed into the local folder `--stage` and then uploaded, each file
tagged with its sha256, the manifest last, so a reader never finds a manifest naming a shard not yet there; the same
command rerun after an interruption resumes the packing and uploads only what is not there yet."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from data.caption_files import DIRTY_RULES, CaptionError, load_captions
from data.cli_errors import error_boundary, positive_int
from data.manifest import MANIFEST
from data.object_store import RetryPolicy, is_remote, redact, s3_client, upload_folder, uploaded_sha256
from data.order import image_permutation, order_record
from data.outputs import OutputError, check_output_folder, output_argument, sha256_of, write_text_atomically
from data.records import FORMATS, PackedRecord, merge_mds_index, shard_name, write_shard

IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}
LISTED_LIMIT = 100  # names listed in the manifest per problem kind; the counts are always complete
PLAN = ".pack_plan.json"
UNITS = {"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "b": 1}


@dataclass(frozen=True)
class ImageItem:
    """One image to pack: its identity and its captions, each with the index of its source."""

    path: Path
    pid: int
    captions: list[tuple[int, str, str]]  # (source index, source name, text)


TOOL = "python -m data.pack"  # also data.pack_dataset: both write the same resumable shard folders


def parse_size(text: str) -> int:
    """'256MB' -> bytes."""
    lowered = text.strip().lower()
    for unit, factor in sorted(UNITS.items(), key=lambda u: -len(u[0])):
        if lowered.endswith(unit) and lowered[: -len(unit)].strip().replace(".", "", 1).isdigit():
            size = int(float(lowered[: -len(unit)]) * factor)
            if size <= 0:
                raise ValueError(f"--shard-size must be more than 0 bytes (got {text!r})")
            return size
    if lowered.isdigit() and int(lowered) > 0:
        return int(lowered)
    raise ValueError(f"--shard-size must look like 256MB or 1GB (got {text!r})")


def _record(image_index: int, item: ImageItem, num_sources: int) -> PackedRecord:
    """Caption ids are image_index * num_sources + source index: stable, dense and known from the manifest."""
    captions = [
        {"source": source, "caption_id": image_index * num_sources + source_index}
        for source_index, source, _ in item.captions
    ]
    texts = [" ".join(text.split()).encode() for _, _, text in item.captions]  # one line per caption
    meta = {"pid": item.pid, "image": item.path.name, "image_index": image_index, "captions": captions}
    suffix = IMAGE_SUFFIXES[item.path.suffix.lower()]
    return PackedRecord(f"{image_index:09d}", item.path.read_bytes(), suffix, meta, texts)


def _shard_files(path: Path) -> list[Path]:
    """A shard's files: the tar itself (wds), or the files of its folder (mds)."""
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _pack_one_shard(out_dir: Path, index: int, items: list[ImageItem], first: int, sources: int, fmt: str) -> dict:
    name = shard_name(index, fmt)
    write_shard(out_dir / name, [_record(first + k, item, sources) for k, item in enumerate(items)], fmt)
    info = {
        "name": name,
        "images": len(items),
        "captions": sum(len(item.captions) for item in items),
        "sha256": sha256_of(out_dir / name),
        "bytes": sum(p.stat().st_size for p in _shard_files(out_dir / name)),
    }
    write_text_atomically(out_dir / f".{name}.done", json.dumps(info))
    return info


def plan_shards(items: list[ImageItem], *, images_per_shard: int | None, shard_bytes: int | None) -> list[int]:
    """First item index of each shard: fixed image counts, or image bytes accumulated up to a target size."""
    if images_per_shard:
        return list(range(0, len(items), images_per_shard))
    starts, size = [0], 0
    for index, item in enumerate(items):
        item_size = item.path.stat().st_size + 512 * 4  # tar headers of the image, json and txt entries
        if size and size + item_size > shard_bytes:
            starts.append(index)
            size = 0
        size += item_size
    return starts


def _fingerprint(items: list[ImageItem], starts: list[int], sources: list[str], fmt: str) -> str:
    digest = hashlib.sha256(json.dumps([fmt, sources, starts]).encode())
    for item in items:
        digest.update(json.dumps([item.path.name, item.pid, item.captions]).encode())
    return digest.hexdigest()


def _resume_point(out_dir: Path, fingerprint: str) -> dict[str, dict]:
    """Shards already packed by an interrupted run of the same command (by their .done notes)."""
    plan = out_dir / PLAN
    if plan.is_file():
        if json.loads(plan.read_text()).get("fingerprint") != fingerprint:
            raise CaptionError(f"{out_dir} holds a packing of other inputs or options; choose a new --out or delete it")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        plan.write_text(json.dumps({"fingerprint": fingerprint}))
    done = {}
    for note in out_dir.glob(".shard-*.done"):
        info = json.loads(note.read_text())
        if (out_dir / info["name"]).exists():
            done[info["name"]] = info
    return done


def write_shards(
    items: list[ImageItem],
    out_dir: Path,
    *,
    sources: list[str],
    images_per_shard: int | None = None,
    shard_bytes: int | None = None,
    extra: dict,
    fmt: str = "wds",
    workers: int = 1,
) -> dict:
    """Shards (in parallel, resuming an interrupted run) and the manifest, written last; returns the manifest."""
    if fmt not in FORMATS:
        raise CaptionError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    starts = plan_shards(items, images_per_shard=images_per_shard, shard_bytes=shard_bytes or 256 << 20)
    done = _resume_point(out_dir, _fingerprint(items, starts, sources, fmt))
    ends = starts[1:] + [len(items)]
    todo = [(i, s, e) for i, (s, e) in enumerate(zip(starts, ends, strict=True)) if shard_name(i, fmt) not in done]
    if done:
        print(f"resuming: {len(done)} of {len(starts)} shards already packed in {out_dir}", flush=True)
    progress = tqdm(total=len(items), initial=len(items) - sum(e - s for _, s, e in todo), desc="packing", unit="img")
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            pool.submit(_pack_one_shard, out_dir, i, items[s:e], s, len(sources), fmt): e - s for i, s, e in todo
        }
        for future in as_completed(futures):
            info = future.result()
            done[info["name"]] = info
            progress.update(futures[future])
    progress.close()
    shards = [done[shard_name(i, fmt)] for i in range(len(starts))]
    if fmt == "mds":
        merge_mds_index(out_dir, [s["name"] for s in shards])
    manifest = {
        "format": fmt,
        "sources": sources,
        "num_images": len(items),
        "num_captions": sum(s["captions"] for s in shards),
        "caption_id_space": len(items) * len(sources),
        "shards": shards,
        **extra,
    }
    write_text_atomically(out_dir / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def pack(
    images_dir: Path,
    caption_files: list[Path],
    out_dir: Path,
    *,
    images_per_shard: int | None = 1000,
    shard_bytes: int | None = None,
    fmt: str = "wds",
    workers: int = 1,
    order_seed: int = 0,
    dirty_rule: str = "reference",
) -> dict:
    if not images_dir.is_dir():
        raise CaptionError(f"image folder not found: {images_dir}")
    caption_set = load_captions(caption_files, dirty_rule=dirty_rule, seed=order_seed)
    on_disk = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    packed = [p for p in on_disk if any(t is not None for t in caption_set.captions.get(p.name, ()))]
    without_captions = sorted({p.name for p in on_disk} - {p.name for p in packed})
    without_images = sorted(set(caption_set.captions) - {p.name for p in on_disk})
    if not packed:
        raise CaptionError(f"no image in {images_dir} has a caption in {', '.join(map(str, caption_files))}")
    image_order = order_record([p.name for p in packed], order_seed)
    packed = [packed[i] for i in image_permutation(len(packed), order_seed)]  # random order across all shards

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
        "image_order": image_order,
        "dirty_caption_rule": caption_set.dirty_rule,
        "dirty_captions_replaced": caption_set.counts_per_source(caption_set.dirty_replaced),  # per caption file
        "dirty_captions_dropped": caption_set.counts_per_source(caption_set.dirty_unreplaceable),
    }
    return write_shards(
        items,
        out_dir,
        sources=names,
        images_per_shard=images_per_shard,
        shard_bytes=shard_bytes,
        extra=extra,
        fmt=fmt,
        workers=workers,
    )


def check_out(out: Path, *, inputs: list[Path] = ()) -> None:
    """--out must be new, empty, or an interrupted packing to resume (its plan file decides whether it matches)."""
    check_output_folder(out, flag="--out", overwrite=(out / PLAN).is_file(), protect=list(inputs), tool=TOOL)


def out_location(text: str) -> Path | str:
    """--out: a local folder, or a remote URL kept as text (a Path would fold its '//')."""
    return text if is_remote(text) else Path(text)


def check_remote_out(remote: str, stage: Path | None, *, inputs: list[Path], policy: RetryPolicy) -> None:
    """An s3:// --out needs a --stage folder, checked as a local --out is; the prefix must not hold another packing's
    manifest unless --stage resumes one (the store is asked last, so that a mistyped path fails without it, and an
    unreachable store fails before any packing)."""
    if not remote.startswith("s3://"):
        raise OutputError(f"--out {redact(remote)}: remote outputs are s3:// URLs (http is read-only)")
    if stage is None:
        raise OutputError(f"--out {redact(remote)} needs --stage DIR, the local folder the shards are packed in")
    check_output_folder(stage, flag="--stage", overwrite=(stage / PLAN).is_file(), protect=list(inputs), tool=TOOL)
    if uploaded_sha256(s3_client(), remote, MANIFEST, policy=policy) is not None and not (stage / PLAN).is_file():
        raise OutputError(f"--out {redact(remote)} already holds a packing (manifest.json); choose another prefix")


def publish(local: Path, remote: str, manifest: dict, *, policy: RetryPolicy) -> int:
    """Uploads the shards (with MDS, the root index.json after them) and then the manifest; returns files sent."""
    names = [str(f.relative_to(local)) for s in manifest["shards"] for f in _shard_files(local / s["name"])]
    if manifest["format"] == "mds":
        names.append("index.json")
    return upload_folder(local, remote, [*names, MANIFEST], policy=policy)


def add_shard_outputs(parser: argparse.ArgumentParser) -> None:
    """--out (a folder or s3://BUCKET/PREFIX) and --stage, as data.pack and data.pack_dataset take them."""
    output_argument(
        parser, "--out", kind="folder", required=True, type=out_location,
        help="output folder for shards and manifest.json: new, empty, or an interrupted packing to resume; or "
        "s3://BUCKET/PREFIX (with --stage)",
    )  # fmt: skip
    output_argument(
        parser, "--stage", kind="folder", default=None,
        help="with an s3:// --out: the local folder the shards are packed in before they are uploaded (kept, so "
        "that the same command resumes an interrupted packing or upload)",
    )  # fmt: skip


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.pack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--captions", type=Path, nargs="+", required=True, help="caption JSON files")
    add_shard_outputs(parser)
    parser.add_argument("--format", choices=FORMATS, default="wds", help="webdataset tar or mosaicml-streaming MDS")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--shard-size", default=None, help="target shard size, e.g. 256MB (the default)")
    size.add_argument("--images-per-shard", type=positive_int, default=None, help="a fixed number of images per shard")
    parser.add_argument(
        "--workers", type=positive_int, default=min(8, os.cpu_count() or 1), help="parallel shard writers"
    )
    parser.add_argument("--order-seed", type=int, default=0, help="seed of the random image order (and caption draws)")
    parser.add_argument(
        "--dirty-captions",
        choices=DIRTY_RULES,
        default="reference",
        help="reference: all captions checked for 'description]' or '<', replaced by a random static caption; "
        "same_captioner: dynamic captions with [...] or <...> take the same captioner's static caption",
    )
    args = parser.parse_args(argv)
    if args.images_per_shard is not None and args.images_per_shard <= 0:
        parser.error(f"--images-per-shard must be > 0 (got {args.images_per_shard})")
    remote = args.out if isinstance(args.out, str) else None
    policy = RetryPolicy()
    try:
        if remote is not None:
            check_remote_out(remote, args.stage, inputs=[args.images, *args.captions], policy=policy)
        else:
            check_out(args.out, inputs=[args.images, *args.captions])
        local = args.stage if remote is not None else args.out
        shard_bytes = parse_size(args.shard_size) if args.shard_size else None
        manifest = pack(
            args.images,
            args.captions,
            local,
            images_per_shard=args.images_per_shard,
            shard_bytes=shard_bytes,
            fmt=args.format,
            workers=args.workers,
            order_seed=args.order_seed,
            dirty_rule=args.dirty_captions,
        )
        if remote is not None:
            sent = publish(local, remote, manifest, policy=policy)
            print(f"uploaded {sent} file(s) to {redact(remote)}, manifest.json last", flush=True)
    except (CaptionError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"packed {manifest['num_images']} images, {manifest['num_captions']} captions into "
        f"{len(manifest['shards'])} {args.format} shards in {redact(remote) if remote else args.out} (random image order, seed {args.order_seed}); "
        f"dirty captions ({args.dirty_captions} rule) replaced: {sum(manifest['dirty_captions_replaced'].values())}, "
        f"dropped: {sum(manifest['dirty_captions_dropped'].values())}; images without "
        f"captions: {manifest['images_without_captions']['count']}; captions without images: "
        f"{manifest['captions_without_images']['count']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
