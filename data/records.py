"""The packed record, one per image, and its two on-disk formats: webdataset tar and MDS.

A record holds the image's original bytes, a JSON meta (pid, image file name, image index, and per
caption its global id and source) and the captions as UTF-8 text, one per line, in the meta's order.
Keeping the texts out of the JSON means a damaged caption costs that caption, not the whole record.

    wds: <key>.<jpg|png>, <key>.json, <key>.txt in a tar (webdataset's convention)
    mds: an MDS partition folder per shard (mosaicml-streaming's MDSWriter), columns key, image, json, txt
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from data.object_store import ShardCache
from data.outputs import sha256_of

FORMATS = ("wds", "mds")
MDS_COLUMNS = {"key": "str", "image": "bytes", "json": "bytes", "txt": "bytes"}
MDS_SIZE_LIMIT = (1 << 32) - 1  # one .mds file per partition: MDS offsets are uint32


@dataclass(frozen=True)
class PackedRecord:
    key: str
    image: bytes
    image_ext: str  # jpg | png
    meta: dict  # pid, image, image_index, captions: [{caption_id, source}]
    captions: list[bytes]  # UTF-8 texts in meta["captions"] order


@dataclass(frozen=True)
class RawRecord:
    """A record as read back: fields still encoded, so a damaged field fails only when used."""

    key: str
    image: bytes | None
    meta: bytes | None
    captions: bytes | None


@dataclass(frozen=True)
class ShardProblem:
    """Where a shard stopped yielding records, or why it cannot be trusted: missing_shard | truncated_shard (shorter
    than the manifest says, or its tar ends early) | changed_shard (not the bytes the manifest's sha256 names)."""

    kind: str
    key: str  # the shard's name, with what was found where it is known (sizes, the last intact member)


class _HashingReader:
    """A binary file that hashes what is read through it, for a sha256 check in the same pass as the read."""

    def __init__(self, handle) -> None:
        self.handle, self.digest = handle, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data

    def rest(self) -> None:
        while data := self.read(1 << 20):
            del data


def shard_name(index: int, fmt: str) -> str:
    return f"shard-{index:06d}.tar" if fmt == "wds" else f"shard-{index:06d}"


def write_wds_shard(path: Path, records: list[PackedRecord]) -> None:
    with path.open("wb") as handle, wds.TarWriter(handle, mtime=0) as writer:  # reproducible bytes and checksums
        for record in records:
            writer.write(
                {
                    "__key__": record.key,
                    record.image_ext: record.image,
                    "json": json.dumps(record.meta).encode(),
                    "txt": b"\n".join(record.captions),
                }
            )


def write_mds_shard(folder: Path, records: list[PackedRecord]) -> None:
    from streaming import MDSWriter

    if folder.exists():
        shutil.rmtree(folder)
    with MDSWriter(out=str(folder), columns=MDS_COLUMNS, size_limit=MDS_SIZE_LIMIT, hashes=["sha1"]) as writer:
        for record in records:
            meta = {**record.meta, "ext": record.image_ext}
            writer.write(
                {
                    "key": record.key,
                    "image": record.image,
                    "json": json.dumps(meta).encode(),
                    "txt": b"\n".join(record.captions),
                }
            )


def write_shard(path: Path, records: list[PackedRecord], fmt: str) -> None:
    """Writes to a hidden partial path, then renames: a shard is either complete or absent."""
    partial = path.with_name(f".{path.name}.partial")
    if fmt == "wds":
        write_wds_shard(partial, records)
    else:
        write_mds_shard(partial, records)
    if path.is_dir():
        shutil.rmtree(path)
    os.replace(partial, path)


def merge_mds_index(root: Path, names: list[str]) -> None:
    """The root index.json over the partition folders, so that streaming's StreamingDataset reads them too."""
    from streaming.base.util import merge_index

    (root / "index.json").unlink(missing_ok=True)
    logging.disable(logging.WARNING)  # merge_index warns about its temporary folder and our existing one
    try:
        merge_index([str(root / name / "index.json") for name in names], str(root), keep_local=True)
    finally:
        logging.disable(logging.NOTSET)


def _complete(sample: dict) -> bool:
    return any(k in sample for k in ("jpg", "png", "jpeg")) and "json" in sample and "txt" in sample


def read_wds_shard(
    path: Path, *, expected_bytes: int | None = None, expected_sha256: str | None = None
) -> Iterator[RawRecord | ShardProblem]:
    """Records in file order; a damaged shard ends with one ShardProblem after its intact records.

    A tar cut on a block boundary reads as a shorter valid tar, so the manifest's size and sha256 are checked
    too: a shard shorter than `expected_bytes` is truncated from the start (its last, possibly cut record is kept
    only if it has all its members); one whose bytes hash to another sha256 has changed since it was packed."""
    try:
        handle = path.open("rb")
    except OSError:
        yield ShardProblem("missing_shard", path.name)
        return
    with handle:
        size = os.fstat(handle.fileno()).st_size
        cut = expected_bytes is not None and size < expected_bytes
        reader = _HashingReader(handle) if expected_sha256 and not cut else None
        files = wds.tariterators.tar_file_iterator(reader or handle)
        for_url = ({**f, "__url__": str(path)} for f in files)
        held, last_key, broken = None, None, False
        try:
            for sample in wds.tariterators.group_by_keys(for_url):
                if held is not None:
                    yield held
                image = next((sample[k] for k in ("jpg", "png", "jpeg") if k in sample), None)
                held, last_key = RawRecord(sample["__key__"], image, sample.get("json"), sample.get("txt")), sample
        except Exception:  # tarfile.ReadError, EOFError, zlib errors: the rest of the shard is lost
            broken = True
        if held is not None and not ((cut or broken) and not _complete(last_key)):
            yield held
        last = f"after record {last_key['__key__']}" if last_key is not None else "before its first record"
        if cut:
            yield ShardProblem("truncated_shard", f"{path.name} ({size} of {expected_bytes} bytes, {last})")
        elif broken:
            yield ShardProblem("truncated_shard", f"{path.name} (unreadable tar {last})")
        elif reader is not None:
            reader.rest()  # the tar's end padding: the sha256 covers the whole file
            if reader.digest.hexdigest() != expected_sha256:
                yield ShardProblem("changed_shard", f"{path.name} (sha256 differs from the manifest's)")


def _mds_intact_samples(path: Path, samples: int) -> int:
    """How many of an .mds file's samples lie wholly inside it (a truncated file loses its tail).
    The file starts with uint32 count, then count + 1 uint32 end offsets (streaming's MDS layout)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        header = handle.read(4 * (samples + 2))
    if len(header) < 4 * (samples + 2):
        return 0
    offsets = [int.from_bytes(header[4 * (i + 1) : 4 * (i + 2)], "little") for i in range(samples + 1)]
    return sum(1 for end in offsets[1:] if end <= size)


class MDSShards:
    """An MDS data set (merged index.json over partition folders) read through mosaicml-streaming's Stream from the
    `local` folder; with a `cache` (data/object_store.py), a partition's files are fetched into it when first read."""

    def __init__(self, local: Path, cache: ShardCache | None = None) -> None:
        from streaming.base.stream import Stream

        self.local, self.cache = Path(local), cache
        self.stream = Stream(remote=None, local=str(local))
        self.stream.apply_default(
            {"split": None, "download_retry": 0, "download_timeout": 120, "validate_hash": None, "keep_zip": False}
        )
        self._readers: dict[str, list] | None = None
        self._changed: dict[str, bool] = {}  # per partition, once per reader object (an epoch's worker)

    def _partitions(self) -> dict[str, list]:
        if self._readers is None:
            from streaming.base.world import World

            # As its own local leader: index.json is fetched ahead by data.manifest, so nobody waits.
            alone = World(num_nodes=1, ranks_per_node=1, workers_per_rank=1, worker=0)
            readers = self.stream.get_shards(alone, allow_unsafe_types=False)
            self._readers = {}
            for reader in readers:
                self._readers.setdefault(Path(reader.raw_data.basename).parts[0], []).append(reader)
        return self._readers

    def _fetched(self, name: str, readers: list) -> bool:
        """The partition's files are in the local folder (fetched now when there is a cache); False when missing."""
        if self.cache is None:
            return True
        files = [f"{name}/index.json", *(reader.raw_data.basename for reader in readers)]
        return self.cache.fetch(files, unit=name)  # RemoteUnavailable passes up to the stream

    def _changed_since_packed(self, name: str, expected_sha256: str | None) -> bool:
        if expected_sha256 is None:
            return False
        if name not in self._changed:
            self._changed[name] = sha256_of(self.local / name) != expected_sha256
        return self._changed[name]

    def read(self, name: str, expected_sha256: str | None = None) -> Iterator[RawRecord | ShardProblem]:
        readers = self._partitions().get(name)
        if not readers or not self._fetched(name, readers) or not (self.local / name).is_dir():
            yield ShardProblem("missing_shard", name)  # the merged index may still list a partition that is gone
            return
        changed = self._changed_since_packed(name, expected_sha256)
        for reader in readers:
            try:
                self.stream.prepare_shard(reader)
            except Exception:
                yield ShardProblem("missing_shard", name)
                return
            path = self.local / reader.raw_data.basename
            intact = _mds_intact_samples(path, reader.samples)
            for index in range(intact):
                try:
                    item = reader.get_item(index)
                except Exception:
                    intact = -1
                    break
                yield RawRecord(item["key"], item["image"], item["json"], item["txt"])
            if intact < reader.samples:
                yield ShardProblem("truncated_shard", name)
                return
        if changed:
            yield ShardProblem("changed_shard", f"{name} (sha256 differs from the manifest's)")
