"""Index a folder of images once, so that it can be searched by description (`eval.search.gallery_search`).

python -m eval index --checkpoint RUN_DIR|CHECKPOINT_DIR|WEIGHTS_FILE --images DIR --out INDEX [--approximate]

INDEX is one safetensors file, written to a temporary sibling and renamed into place, so it is either the
old index or the new one, never half of each:

    features      (N, E) float16   unit-norm image features, one row per image
    paths         (B,) uint8       the N paths relative to DIR, UTF-8, separated by NUL bytes
    file_sizes    (N,) int64       size and modification time (ns) of each image when it was encoded:
    file_mtimes   (N,) int64       a changed file is encoded again on the next run
    approximate   (S,) uint8       optional: a serialized FAISS index over the same rows (--approximate)

and string metadata: `format`, `images` (DIR, absolute), `model` (JSON: checkpoint folder, sha256 of its
model.safetensors, model config) and `unreadable` (JSON: relative path -> [size, mtime] of each file that could not be decoded;
it is tried again once it changes).

Rerunning on the same --out with the same model and folder encodes only images that are new or changed,
drops the rows of deleted images and replaces the file atomically. Any other existing file at --out is
refused. Launched with several ranks (deepspeed --num_gpus N --module eval index ...), each rank encodes
a contiguous share of the images to encode and rank 0 writes the index.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.cli_errors import error_boundary, non_negative_int, positive_int
from data.outputs import check_output_file, output_argument, sha256_of
from engine.model import CLIPDualEncoder
from engine.runtime import collectives
from engine.runtime.checkpoint import (
    MODEL_CONFIG_FILE,
    MODEL_FILE,
    CheckpointError,
    described_model_config,
    is_weights_file,
    load_exported_model,
    resolve_tag_dir,
)
from eval.encode import ImageFiles

FORMAT = "person-search-gallery-index/1"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
PATH_SEPARATOR = b"\0"  # the one byte no file name can hold
# What PIL raises for a file it cannot decode: truncated or corrupt data, an unknown format, a decompression bomb.


class GalleryIndexError(ValueError):
    """An index, image folder or model that cannot be used; the one-line message names it."""


@dataclass
class ModelIdentity:
    """Which weights produced the features: a gallery must be searched with exactly these."""

    checkpoint: str  # the checkpoint (tag) folder, absolute
    sha256: str  # of its model.safetensors
    model_config: dict  # its model_config.json

    @classmethod
    def of(cls, checkpoint: str | Path) -> ModelIdentity:
        if is_weights_file(checkpoint):  # the config is the one its shapes give
            model, path = load_exported_model(checkpoint)
            return cls(
                checkpoint=str(path.resolve()), sha256=sha256_of(path), model_config=described_model_config(model)
            )
        tag_dir = resolve_tag_dir(checkpoint).resolve()
        config_path = tag_dir / MODEL_CONFIG_FILE
        if not config_path.is_file() or not (tag_dir / MODEL_FILE).is_file():
            raise CheckpointError(f"checkpoint {tag_dir} lacks {MODEL_CONFIG_FILE} or {MODEL_FILE}")
        try:
            model_config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, OSError) as error:
            raise CheckpointError(f"cannot read {config_path}: {error}") from None
        return cls(checkpoint=str(tag_dir), sha256=sha256_of(tag_dir / MODEL_FILE), model_config=model_config)

    def same_model(self, other: ModelIdentity) -> bool:
        """Same weights and architecture; the folder may have moved."""
        return self.sha256 == other.sha256 and self.model_config == other.model_config

    def describe(self) -> str:
        return f"{self.checkpoint} (sha256 {self.sha256[:12]})"


@dataclass
class GalleryIndex:
    """An index file's contents; `features` is None when it was read without them."""

    images: Path  # the indexed folder, absolute
    paths: list[str]  # relative POSIX paths, one per row
    model: ModelIdentity
    file_sizes: list[int]
    file_mtimes: list[int]
    unreadable: dict[str, list[int]] = field(default_factory=dict)  # relative path -> [size, mtime_ns]
    features: torch.Tensor | None = None  # (N, E) float16
    approximate: dict | None = None  # how the FAISS part was built, when there is one

    def __len__(self) -> int:
        return len(self.paths)


def read_index(path: str | Path, *, features: bool = True) -> GalleryIndex:
    """The index at `path`; its features only when asked (a million rows is 1 GB at E = 512)."""
    path = Path(path)
    if not path.is_file():
        raise GalleryIndexError(f"no gallery index at {path}")
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise GalleryIndexError(f"{path} is not a gallery index (format {metadata.get('format')!r})")
            paths = decode_paths(file.get_tensor("paths"))
            index = GalleryIndex(
                images=Path(metadata["images"]),
                paths=paths,
                model=ModelIdentity(**json.loads(metadata["model"])),
                file_sizes=file.get_tensor("file_sizes").tolist(),
                file_mtimes=file.get_tensor("file_mtimes").tolist(),
                unreadable=json.loads(metadata.get("unreadable", "{}")),
                approximate=json.loads(metadata["approximate"]) if "approximate" in metadata else None,
            )
            if features:
                index.features = file.get_tensor("features")
            rows = file.get_slice("features").get_shape()[0]
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise GalleryIndexError(f"{path} is not a readable gallery index: {str(error).splitlines()[0]}") from None
    if rows != len(paths):
        raise GalleryIndexError(f"{path} is damaged: {rows} feature rows for {len(paths)} paths")
    return index


def encode_paths(paths: list[str]) -> torch.Tensor:
    return torch.frombuffer(bytearray(PATH_SEPARATOR.join(p.encode("utf-8") for p in paths)), dtype=torch.uint8)


def decode_paths(data: torch.Tensor) -> list[str]:
    raw = data.numpy().tobytes()
    return [p.decode("utf-8") for p in raw.split(PATH_SEPARATOR)] if raw else []


def list_images(folder: Path) -> list[str]:
    """Relative POSIX paths of every .jpg/.jpeg/.png file under `folder`, recursively, sorted."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


@torch.no_grad()
def encode_images(
    model: CLIPDualEncoder,
    paths: list[Path],
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, E) unit-norm float32, readable (N,) bool) of every path, gathered on every rank; each rank
    encodes its `block_bounds` share."""
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    start, stop = collectives.block_bounds(len(paths))
    loader = DataLoader(
        ImageFiles(paths[start:stop], model.cfg.image_size, blank_undecodable=True),
        batch_size=batch_size,
        num_workers=num_workers,
    )
    quiet = not sys.stderr.isatty() or collectives.rank() != 0
    features, readable = [], []
    for images, ok in tqdm(loader, desc="images", mininterval=5.0, leave=False, disable=quiet):
        features.append(F.normalize(model.encode_image(images.to(device, dtype)).float(), dim=-1))
        readable.append(ok.to(device, torch.float32))
    local = torch.cat(features) if features else torch.empty(0, model.cfg.embed_dim, device=device)
    local_ok = torch.cat(readable) if readable else torch.empty(0, device=device)
    gathered = collectives.gather_blocks(local, len(paths)).cpu()
    gathered_ok = collectives.gather_blocks(local_ok[:, None], len(paths)).cpu()[:, 0] > 0.5
    return gathered, gathered_ok


def build_approximate(features: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """A FAISS inverted-file index over the unit-norm (N, E) features, inner-product metric, vectors stored as fp16;
    returned serialized (S,) uint8 with a description of how it was built."""
    import faiss  # optional: checked by require_faiss before anything is encoded

    num_rows, width = features.shape
    lists = max(1, min(int(num_rows**0.5), num_rows // 39))  # FAISS wants >= 39 training points per list
    factory = f"IVF{lists},SQfp16"
    index = faiss.index_factory(width, factory, faiss.METRIC_INNER_PRODUCT)
    sample = torch.randperm(num_rows, generator=torch.Generator().manual_seed(0))[: 64 * lists]
    index.train(features[sample.sort().values].float().numpy())
    for start in range(0, num_rows, 65536):  # fp32 copies of 64 k rows at a time, not of the whole gallery
        index.add(features[start : start + 65536].float().numpy())
    described = {"library": "faiss-cpu", "version": faiss.__version__, "factory": factory, "lists": lists}
    return torch.from_numpy(faiss.serialize_index(index)), described


def require_faiss(flag: str) -> None:
    try:
        import faiss  # noqa: F401
    except ImportError:
        raise GalleryIndexError(f"{flag} needs FAISS, which is not installed (pip install faiss-cpu)") from None


def write_index(
    out: Path,
    *,
    images: Path,
    paths: list[str],
    features: torch.Tensor,
    model: ModelIdentity,
    file_sizes: list[int],
    file_mtimes: list[int],
    unreadable: dict[str, list[int]],
    approximate: bool,
) -> None:
    """Writes a temporary sibling of `out` and renames it over `out`: readers see the old or the new index."""
    features = features.to(torch.float16).contiguous()  # (N, E)
    tensors = {
        "features": features,
        "paths": encode_paths(paths),
        "file_sizes": torch.tensor(file_sizes, dtype=torch.int64),
        "file_mtimes": torch.tensor(file_mtimes, dtype=torch.int64),
    }
    metadata = {
        "format": FORMAT,
        "images": str(images),
        "model": json.dumps(vars(model)),
        "unreadable": json.dumps(unreadable),
    }
    if approximate:
        tensors["approximate"], described = build_approximate(features)
        metadata["approximate"] = json.dumps(described)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


@dataclass
class _Plan:
    """What a run keeps from an existing index and what it must encode."""

    existing: GalleryIndex | None
    keep: list[int]  # rows of the existing index whose files are unchanged
    encode: list[str]  # relative paths to encode
    still_unreadable: dict[str, list[int]]  # files that failed to decode before and have not changed since
    stats: dict[str, tuple[int, int]]  # relative path -> (size, mtime_ns) now


def plan(out: Path, images: Path, identity: ModelIdentity, *, approximate: bool) -> _Plan:
    """Checks --out and lists the work; raises GalleryIndexError before anything is written."""
    found = list_images(images)
    if not found:
        raise GalleryIndexError(f"no .jpg/.jpeg/.png images under {images}")
    stats = {}
    for relative in found:
        status = (images / relative).stat()
        stats[relative] = (status.st_size, status.st_mtime_ns)
    existing = None
    if out.exists():
        try:
            existing = read_index(out, features=False)
        except GalleryIndexError as error:
            raise GalleryIndexError(
                f"--out {out} exists and is not an index this command can update ({error})"
            ) from None
        if not existing.model.same_model(identity):
            raise GalleryIndexError(
                f"--out {out} was built with another model ({existing.model.describe()}, not {identity.describe()}): "
                "choose another --out"
            )
        if existing.images != images:
            raise GalleryIndexError(f"--out {out} indexes {existing.images}, not {images}: choose another --out")
    keep, known = [], set()
    for row, relative in enumerate(existing.paths if existing else []):
        if stats.get(relative) == (existing.file_sizes[row], existing.file_mtimes[row]):
            keep.append(row)
            known.add(relative)
    failed_before = existing.unreadable if existing else {}
    still_unreadable = {p: list(stats[p]) for p in found if p in failed_before and tuple(failed_before[p]) == stats[p]}
    encode = [p for p in found if p not in known and p not in still_unreadable]
    if approximate:
        require_faiss("--approximate")
    return _Plan(existing=existing, keep=keep, encode=encode, still_unreadable=still_unreadable, stats=stats)


def run(args: argparse.Namespace) -> int:
    images, out = Path(args.images).resolve(), Path(args.out)
    if not images.is_dir():
        raise GalleryIndexError(f"--images {args.images} is not a folder")
    if args.batch_size < 1:
        raise GalleryIndexError(f"--batch-size must be >= 1 (got {args.batch_size})")
    identity = ModelIdentity.of(args.checkpoint)
    work = plan(out, images, identity, approximate=args.approximate)
    existing = work.existing
    removed = sum(p not in work.stats for p in existing.paths) if existing else 0  # deleted since (changed: encoded)
    unchanged = (
        existing is not None
        and (existing.approximate is not None) == args.approximate
        and set(existing.unreadable) == set(work.still_unreadable)
    )
    if not work.encode and not removed and unchanged:
        if collectives.rank() == 0:
            print(f"{out} is up to date: {len(existing)} images from {images}")
        return 0
    model, _ = load_exported_model(identity.checkpoint)
    features, readable = encode_images(
        model,
        [images / p for p in work.encode],
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=collectives.device(),
    )
    if collectives.rank() != 0:  # every rank encoded its share; rank 0 writes
        return 0
    unreadable = [p for p, ok in zip(work.encode, readable.tolist(), strict=True) if not ok]
    for relative in unreadable:
        print(f"warning: skipped unreadable image {images / relative}", file=sys.stderr)
    rows: dict[str, torch.Tensor] = {}
    if existing is not None and work.keep:
        old = read_index(out).features
        rows |= {existing.paths[r]: old[r] for r in work.keep}
    rows |= {p: features[i] for i, p in enumerate(work.encode) if readable[i]}
    if not rows:
        raise GalleryIndexError(f"none of the {len(work.encode)} images under {images} could be read")
    paths = sorted(rows)
    write_index(
        out,
        images=images,
        paths=paths,
        features=torch.stack([rows[p] for p in paths]),
        model=identity,
        file_sizes=[work.stats[p][0] for p in paths],
        file_mtimes=[work.stats[p][1] for p in paths],
        unreadable=work.still_unreadable | {p: list(work.stats[p]) for p in unreadable},
        approximate=args.approximate,
    )
    added = len(work.encode) - len(unreadable)
    print(
        f"wrote {out}: {len(paths)} images from {images} ({added} encoded, {len(work.keep)} kept, {removed} removed, "
        f"{len(unreadable)} unreadable) with {identity.describe()}"
    )
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eval index", description="Encode every image under a folder into a searchable index."
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a run folder, its checkpoints/ folder, one checkpoint, or a weights file"
    )
    parser.add_argument("--images", required=True, help="folder of .jpg/.jpeg/.png images, searched recursively")
    output_argument(
        parser,
        "--out",
        kind="file",
        required=True,
        help="the index file; an existing index of the same model is updated",
    )
    parser.add_argument("--approximate", action="store_true", help="also build a FAISS index for search --approximate")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument(
        "--workers", type=non_negative_int, default=0, help="image loading workers (0: in this process)"
    )
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return parser.parse_args(argv)


@error_boundary
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # An existing --out is updated only if it is an index of the same model and images (checked in plan()).
    check_output_file(args.out, flag="--out", overwrite=True, protect=[Path(args.images), Path(args.checkpoint)])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched with several ranks: encode on all of them
        from engine.runtime.deepspeed_setup import init_distributed

        init_distributed()
    try:
        return run(args)
    except (GalleryIndexError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
