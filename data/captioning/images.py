"""The images to caption: the files of a folder, or the records of a packed shard folder, named by file name
(the key of the caption JSON, docs/method.md), and their split over data-parallel ranks.

From shards only three things are read, so that the record layout may change around them: manifest.json's
list of shards, the record's image bytes under "jpg" or "png", and the original file name under "image" in
the record's "json". A tar shard image is located once (tar offset and size) and read when its batch comes
up; an MDS shard image by its partition and sample index, read through mosaicml-streaming."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from data.captioning.instructions import CaptioningError
from data.manifest import MANIFEST

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what data.pack packs


@dataclass(frozen=True)
class ImageRef:
    """One image: its file name, and where its bytes are (a file, or a span of a tar shard)."""

    name: str
    path: Path
    offset: int = 0  # inside a tar shard: where the image member's data starts; in MDS: the sample index
    size: int = -1  # inside a tar shard: its length; -1 = the whole file; -2 = an MDS sample

    def read(self) -> Image.Image:
        """Decodes fully (a truncated JPEG fails here, not later in the processor)."""
        if self.size == -2:
            data = _mds_reader(self.path.parent, self.path.name).get_item(self.offset)["image"]
        elif self.size < 0:
            data = self.path.read_bytes()
        else:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read(self.size)
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")


def list_folder(root: Path) -> list[ImageRef]:
    if not root.is_dir():
        raise CaptioningError(f"image folder not found: {root}")
    refs = [ImageRef(p.name, p) for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not refs:
        raise CaptioningError(f"no .jpg/.jpeg/.png images in {root}")
    return refs


def _shard_names(root: Path) -> list[str]:
    path = root / MANIFEST
    if not path.is_file():
        raise CaptioningError(f"no {MANIFEST} in shard folder {root} (pack the images first: python -m data.pack ...)")
    try:
        manifest = json.loads(path.read_text())
        names, shard_format = [str(shard["name"]) for shard in manifest["shards"]], manifest.get("format", "wds")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CaptioningError(f"manifest {path} does not list its shards: {error!r}") from None
    if shard_format not in ("wds", "mds"):
        raise CaptioningError(f"{root} holds {shard_format} shards; --shards reads wds and mds shards")
    return names


_MDS_READERS: dict[tuple[Path, str], object] = {}


def _mds_reader(root: Path, partition: str):
    """The streaming reader of one MDS partition (data.pack writes one .mds file per partition)."""
    key = (root, partition)
    if key not in _MDS_READERS:
        from data.records import MDSShards

        readers = MDSShards(root)._partitions().get(partition)
        if not readers:
            raise CaptioningError(f"MDS partition {partition} is not in {root / 'index.json'}")
        _MDS_READERS[key] = readers[0]
    return _MDS_READERS[key]


def _mds_candidates(root: Path, partition: str):
    """(meta JSON, offset, size) of every record of an MDS partition; offset is the sample index, size -2."""
    if not (root / partition).is_dir():
        raise CaptioningError(f"shard {root / partition} listed in {root / MANIFEST} is missing")
    reader = _mds_reader(root, partition)
    for index in range(reader.samples):
        yield reader.get_item(index)["json"], index, -2


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's convention: the key is the path up to the first dot of the base name, the rest the field."""
    directory, _, base = name.rpartition("/")
    stem, _, field = base.partition(".")
    return f"{directory}/{stem}" if directory else stem, field


def _tar_candidates(root: Path, shard: Path):
    """(meta JSON, offset, size) of every record of a tar shard: headers are walked, image data skipped over."""
    if not shard.is_file():
        raise CaptioningError(f"shard {shard} listed in {root / MANIFEST} is missing")
    records: dict[str, dict] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                key, field = _split_member(member.name)
                if member.isfile() and field == "json":
                    records.setdefault(key, {})["json"] = tar.extractfile(member).read()
                elif member.isfile() and field in ("jpg", "png"):
                    records.setdefault(key, {})["image"] = (member.offset_data, member.size)
    except tarfile.TarError as error:
        raise CaptioningError(f"shard {shard} is not a readable tar file: {error}") from None
    for record in records.values():
        yield record.get("json"), *record.get("image", (None, None))


def list_shards(root: Path) -> list[ImageRef]:
    """Every record's image, named by the file name in its meta; records without either, or repeating a
    name, are skipped and counted."""
    refs, skipped, seen = [], 0, set()
    for shard_name in _shard_names(root):
        shard = root / shard_name
        tar = shard_name.endswith(".tar")
        for meta, offset, size in _tar_candidates(root, shard) if tar else _mds_candidates(root, shard_name):
            try:
                name = Path(json.loads(meta)["image"]).name
            except (KeyError, TypeError, ValueError):
                name = None
            if name is None or offset is None or name in seen:
                skipped += 1
                continue
            seen.add(name)
            refs.append(ImageRef(name, shard, offset, size))
    if skipped:
        log.warning(
            "%d shard records without an image, a file name, or with a repeated file name were skipped", skipped
        )
    if not refs:
        raise CaptioningError(f"no images in the shards of {root}")
    return refs


def rank_of(name: str, world_size: int) -> int:
    """A stable hash of the file name: the split does not depend on which other images exist or on their order."""
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"tde-rank").digest()
    return int.from_bytes(digest, "little") % world_size
