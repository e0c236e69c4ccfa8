"""A shard cut on a tar block boundary reads as a shorter valid tar, so the reader checks the manifest's size and
sha256: truncation is counted as truncated_shard (not as a malformed record), a changed shard as changed_shard,
and the shard is named once, with its sizes and the last intact record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.caption_stream import PROBLEMS
from data.manifest import Manifest
from data.pack import pack
from data.records import ShardProblem, read_wds_shard
from tests.helpers import caption_files, stream, write_caption_set

IMAGES, PER_SHARD = 30, 10


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    root = write_caption_set(tmp_path / "raw", images=IMAGES)
    out = tmp_path / "shards"
    pack(root / "imgs", caption_files(root), out, images_per_shard=PER_SHARD)
    return out


def _problems(shards: Path) -> tuple[dict[str, int], int]:
    """Counts per problem kind and the caption samples read, over one epoch of one worker in this process."""
    source = stream(shards)
    counts = dict.fromkeys(PROBLEMS, 0)
    read = 0
    for item in source.sequence(0):
        if hasattr(item, "caption_id"):
            read += 1
        else:
            counts[item.kind] += 1
    return counts, read


def test_the_manifest_records_each_shards_size(shards: Path) -> None:
    manifest = Manifest.load(shards)
    assert [s.bytes for s in manifest.shards] == [s.path.stat().st_size for s in manifest.shards]
    assert all(s.sha256 and len(s.sha256) == 64 for s in manifest.shards)


@pytest.mark.parametrize("cut", ["block_boundary", "inside_a_block"])
def test_a_truncated_shard_is_counted_and_named_once(shards: Path, cut: str, capsys) -> None:
    victim = shards / "shard-000001.tar"
    size = victim.stat().st_size
    keep = (size // 2) // 512 * 512 if cut == "block_boundary" else (size // 2) // 512 * 512 + 300
    victim.write_bytes(victim.read_bytes()[:keep])
    records = list(read_wds_shard(victim, expected_bytes=size))
    problems = [r for r in records if isinstance(r, ShardProblem)]
    assert len(problems) == 1 and problems[0].kind == "truncated_shard", problems
    assert f"shard-000001.tar ({keep} of {size} bytes, after record" in problems[0].key
    assert records[-1] is problems[0]  # the intact records come first
    counts, read = _problems(shards)
    assert counts["truncated_shard"] == 1
    assert counts["malformed_record"] == 0  # the cut record is part of the truncation, not a damaged sample
    intact = len(records) - 1
    assert read == (2 * PER_SHARD + intact) * 4  # every other caption was read
    capsys.readouterr()
    for _ in stream(shards):  # the batches, as the loader reads them: damage is noted on the way
        pass
    printed = [line for line in capsys.readouterr().out.splitlines() if "truncated_shard" in line]
    assert len(printed) == 1 and "shard-000001.tar" in printed[0] and "repack" in printed[0], printed


def test_a_shard_that_changed_since_packing_is_reported(shards: Path) -> None:
    victim = shards / "shard-000002.tar"
    data = bytearray(victim.read_bytes())
    data[1024 + 40] ^= 0xFF  # inside the first image's bytes: same size, other content
    victim.write_bytes(bytes(data))
    counts, _ = _problems(shards)
    assert counts["changed_shard"] == 1
    assert counts["truncated_shard"] == 0


def test_an_intact_shard_reports_nothing(shards: Path) -> None:
    counts, read = _problems(shards)
    assert not any(counts.values()), counts
    assert read == IMAGES * 4


def test_a_manifest_without_sizes_still_reads(shards: Path) -> None:
    """Manifests written before sizes were recorded: the sha256 alone catches a changed shard."""
    path = shards / "manifest.json"
    raw = json.loads(path.read_text())
    for shard in raw["shards"]:
        shard.pop("bytes")
    path.write_text(json.dumps(raw))
    assert all(s.bytes is None for s in Manifest.load(shards).shards)
    counts, read = _problems(shards)
    assert not any(counts.values()) and read == IMAGES * 4
