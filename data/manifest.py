"""The shard folder's manifest.json: what was packed, in which shards, in which format."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"


class ShardError(ValueError):
    """A shard folder or manifest that cannot be read; the message names it."""


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    images: int
    captions: int


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
    def load(cls, root: str | Path) -> Manifest:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise ShardError(f"no {MANIFEST} in shard folder {root} (pack the data first: python -m data.pack ...)")
        try:
            raw = json.loads(path.read_text())
            shards = [ShardInfo(root / s["name"], int(s["images"]), int(s["captions"])) for s in raw["shards"]]
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
        missing = [s.path.name for s in shards if not s.path.is_file()]
        if missing:
            raise ShardError(f"{len(missing)} shard(s) listed in {path} are missing, first: {missing[0]}")
        return manifest
