"""The shard folder's manifest.json: what was packed, in which shards, in which format."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from data.outputs import atomic_file

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
    def load(cls, root: str | Path, remote: str | None = None) -> Manifest:
        """Reads ROOT/manifest.json; with `remote` (MDS), ROOT is the local cache, filled from remote."""
        root = Path(root)
        path = root / MANIFEST
        if remote is not None:
            fetch(remote, root, MANIFEST)
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
        if manifest.format == "mds" and remote is not None:
            fetch(remote, root, MDS_INDEX)
            return manifest  # shards come from the remote when first read
        missing = [s.path.name for s in shards if not s.path.exists()]
        if len(missing) == len(shards):
            raise ShardError(f"all {len(shards)} shards listed in {path} are missing, first: {missing[0]}")
        if missing:  # the readers skip and count them every epoch
            log.warning("%d shard(s) listed in %s are missing, first: %s", len(missing), path, missing[0])
        return manifest


def fetch(remote: str, local: Path, name: str) -> None:
    """Copies remote/name into the local cache unless present (any scheme mosaicml-streaming downloads)."""
    target = local / name
    if target.is_file():
        return
    from streaming.base.storage.download import CloudDownloader

    try:
        with atomic_file(target) as partial:  # a per-process partial name: ranks sharing a cache each write their own
            CloudDownloader.direct_download(f"{remote.rstrip('/')}/{name}", str(partial), timeout=120)
    except Exception as error:
        raise ShardError(f"cannot fetch {name} from {remote}: {error}") from None
