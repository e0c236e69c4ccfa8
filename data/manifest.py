"""The shard folder's manifest.json: what was packed, in which shards, in which format."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from data.object_store import RemoteUnavailable, RetryPolicy, ShardCache, redact

MANIFEST = "manifest.json"
MDS_INDEX = "index.json"

log = logging.getLogger(__name__)


class ShardError(ValueError):
    """A shard folder or manifest that cannot be read; the message names it."""


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    images: int
    captions: int
    bytes: int | None = None  # as packed; None in manifests written before sizes were recorded
    sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    root: Path
    sources: list[str]
    num_images: int
    caption_id_space: int  # caption ids lie in [0, caption_id_space)
    shards: list[ShardInfo]
    format: str = "wds"  # wds (webdataset tar) | mds (mosaicml-streaming)
    num_identities: int | None = None  # benchmark shards: pids are contiguous labels in [0, num_identities)

    @property
    def first_images(self) -> list[int]:
        """Index of each shard's first image: packing numbers images consecutively across shards."""
        starts, total = [], 0
        for shard in self.shards:
            starts.append(total)
            total += shard.images
        return starts

    @classmethod
    def load(cls, root: str | Path, remote: str | None = None, policy: RetryPolicy | None = None) -> Manifest:
        """Reads ROOT/manifest.json; with `remote` (a URL or a folder), ROOT is the node's local cache of it, and the
        manifest (and MDS index) are fetched into it first; the shards follow when first read (data/object_store.py)."""
        root = Path(root)
        path = root / MANIFEST
        if remote is not None:
            cache = ShardCache(remote, root, policy)
            try:
                found = cache.fetch([MANIFEST])
            except RemoteUnavailable as error:
                raise ShardError(str(error)) from None
            if not found:
                raise ShardError(
                    f"no {MANIFEST} at {redact(remote)} (or it may not be read): pack the data there first"
                )
        if not path.is_file():
            raise ShardError(f"no {MANIFEST} in shard folder {root} (pack the data first: python -m data.pack ...)")
        try:
            raw = json.loads(path.read_text())
            shards = [
                ShardInfo(
                    root / s["name"],
                    int(s["images"]),
                    int(s["captions"]),
                    bytes=None if s.get("bytes") is None else int(s["bytes"]),
                    sha256=s.get("sha256"),
                )
                for s in raw["shards"]
            ]
            identities = raw.get("num_identities")
            manifest = cls(
                root,
                list(raw["sources"]),
                int(raw["num_images"]),
                int(raw["caption_id_space"]),
                shards,
                format=str(raw.get("format", "wds")),
                num_identities=None if identities is None else int(identities),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ShardError(f"manifest {path} is malformed: {error!r}") from None
        if remote is not None:
            try:
                found = manifest.format != "mds" or cache.fetch([MDS_INDEX])
            except RemoteUnavailable as error:
                raise ShardError(str(error)) from None
            if not found:
                raise ShardError(f"no {MDS_INDEX} at {redact(remote)} beside its {MANIFEST}: pack the data again")
            return manifest  # shards come from the remote when first read
        missing = [s.path.name for s in shards if not s.path.exists()]
        if len(missing) == len(shards):
            raise ShardError(f"all {len(shards)} shards listed in {path} are missing, first: {missing[0]}")
        if missing:  # the readers skip and count them every epoch
            log.warning("%d shard(s) listed in %s are missing, first: %s", len(missing), path, missing[0])
        return manifest
