"""Damaged shards: every kind of bad sample is skipped, logged and counted exactly; nothing stops the run."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from data.caption_stream import PROBLEMS, make_loader
from data.outputs import sha256_of
from data.pack import pack
from data.position import DataPosition
from data.records import MDSShards, PackedRecord, merge_mds_index, read_wds_shard, write_shard
from tests.helpers import REPO, TINY, caption_files, stream, write_caption_set

IMAGES, SHARDS = 160, 10  # 16 images x 4 captions per shard; 640 caption samples
EVERY = 20  # one image (or caption) in 20 per kind: 5%


def _jpeg(mode: str, noise: bool = False) -> bytes:
    buffer = io.BytesIO()
    image = Image.effect_noise((32, 64), 60).convert(mode) if noise else Image.new(mode, (32, 64), 128)
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def damage(index: int, record: PackedRecord) -> tuple[PackedRecord, dict[str, int]]:
    """Damages image `index` by a fixed rule; returns the record and the counts it must produce."""
    captions = list(record.captions)
    kind = index % EVERY
    if kind == 1:
        return PackedRecord(record.key, b"", "jpg", record.meta, captions), {"empty_image": 4}
    if kind == 2:
        return PackedRecord(record.key, b"\x00garbage" * 20, "jpg", record.meta, captions), {"undecodable_image": 4}
    if kind == 3:
        whole = _jpeg("RGB", noise=True)  # large enough that the cut falls in the scan data, past the header
        cut = whole[: len(whole) * 2 // 3]
        return PackedRecord(record.key, cut, "jpg", record.meta, captions), {"truncated_image": 4}
    if kind == 4:
        return PackedRecord(record.key, _jpeg("L"), "jpg", record.meta, captions), {"non_rgb_converted": 4}
    if kind == 5:
        captions[1] = b""
        return PackedRecord(record.key, record.image, "jpg", record.meta, captions), {"empty_caption": 1}
    if kind == 6:
        captions[2] = b"a man in a \xff\xfe coat"
        return PackedRecord(record.key, record.image, "jpg", record.meta, captions), {"caption_not_utf8": 1}
    if kind == 7:
        broken = {**record.meta, "captions": record.meta["captions"][:2]}  # 4 caption lines, 2 entries
        return PackedRecord(record.key, record.image, "jpg", broken, captions), {"malformed_record": 1}
    return record, {}


def _read_back(folder: Path, name: str, fmt: str) -> list[PackedRecord]:
    raw = read_wds_shard(folder / name) if fmt == "wds" else MDSShards(folder).read(name)
    return [PackedRecord(r.key, r.image, "jpg", json.loads(r.meta), r.captions.split(b"\n")) for r in raw]


def damaged_shards(tmp_path: Path, fmt: str) -> tuple[Path, dict[str, int]]:
    """Packed shards with 5% of each damage in shards 0-7, shard 8 missing and shard 9 truncated."""
    raw = write_caption_set(tmp_path / "raw", images=IMAGES, dirty_every=10**9)
    out = tmp_path / f"damaged_{fmt}"
    manifest = pack(raw / "imgs", caption_files(raw), out, images_per_shard=IMAGES // SHARDS, fmt=fmt)
    expected = dict.fromkeys(PROBLEMS, 0)
    for shard in manifest["shards"][:8]:
        records = []
        for record in _read_back(out, shard["name"], fmt):
            damaged, counts = damage(record.meta["image_index"], record)
            records.append(damaged)
            for kind, n in counts.items():
                expected[kind] += n
        write_shard(out / shard["name"], records, fmt)
    missing, truncated = manifest["shards"][8]["name"], manifest["shards"][9]["name"]
    if fmt == "wds":
        (out / missing).unlink()
        data = (out / truncated).read_bytes()
        (out / truncated).write_bytes(data[: len(data) // 2 + 100])
    else:
        merge_mds_index(out, [s["name"] for s in manifest["shards"]])  # the rewritten partitions
        shutil.rmtree(out / missing)
        mds = next((out / truncated).glob("*.mds"))
        mds.write_bytes(mds.read_bytes()[: mds.stat().st_size // 2])
    expected["missing_shard"] = expected["truncated_shard"] = 1
    record_checksums(out, [shard["name"] for shard in manifest["shards"][:8]])
    return out, expected


def record_checksums(out: Path, names: list[str]) -> None:
    """The manifest describes the rewritten shards as packed: their damage is in the records (as when the source
    images were damaged before packing), not in bytes changed after packing, which would count as changed_shard."""
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    for shard in manifest["shards"]:
        if shard["name"] in names:
            files = [out / shard["name"]] if (out / shard["name"]).is_file() else list((out / shard["name"]).rglob("*"))
            shard["sha256"] = sha256_of(out / shard["name"])
            shard["bytes"] = sum(f.stat().st_size for f in files if f.is_file())
    path.write_text(json.dumps(manifest))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_every_kind_of_damage_is_skipped_and_counted_exactly(tmp_path: Path, fmt: str):
    out, expected = damaged_shards(tmp_path, fmt)
    assert sum(expected.values()) >= 0.2 * IMAGES  # 5% of each kind
    position = DataPosition(2, IMAGES * 4, len(PROBLEMS))
    trained = []
    for item in make_loader(stream(out, workers=2, batch=1), num_workers=2):
        if position.consume(item):
            trained += item["caption_id"].tolist()
    assert dict(zip(PROBLEMS, position.problems.tolist(), strict=True)) == expected
    # every sample of the intact images in shards 0-7 was trained on, and the truncated shard gave some
    intact = [i for i in range(8 * 16) if i % EVERY not in (1, 2, 3, 7)]
    assert {i * 4 for i in intact} <= set(trained)
    assert len(trained) == len(set(trained))
    assert any(128 <= c // 4 < 144 for c in trained) is False  # shard 8 (images 128-143) is gone
    assert any(c // 4 >= 144 for c in trained)  # shard 9's intact head was read


@pytest.mark.slow
def test_training_over_damaged_shards_completes_and_logs_the_counts(tmp_path: Path):
    out, expected = damaged_shards(tmp_path, "wds")
    config = yaml.safe_load(TINY)
    config["data"] |= {"shards": str(out), "num_workers": 2, "max_damaged_share": 0.5}  # about 30% is damaged
    config["train"] |= {"run_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 4}
    config["eval"] = {"every_epochs": 0}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "launcher.train", "--config", str(tmp_path / "config.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in records if "data_problems" in r)
    assert logged["data_problems"] == expected
    assert "data problems skipped and counted: missing_shard 1, truncated_shard 1" in result.stdout
    assert "data: undecodable_image at 000000002" in result.stderr  # the sample's key is logged
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.multirank
def test_two_ranks_over_damaged_shards_end_the_epoch_together_without_losing_a_batch(tmp_path: Path):
    """The damage leaves the two ranks different numbers of batches, fewer than the manifest promises. With an
    agreement every 3 steps, the rank that runs out does so between agreements; both ranks still end the epoch
    together after exactly the fewest batches either rank has (counted here by reading each rank's stream)."""
    from tests.helpers import DEEPSPEED, free_port

    out, _ = damaged_shards(tmp_path, "wds")
    batch, workers, agree_every = 4, 2, 3
    have = []
    for rank in (0, 1):
        items = make_loader(stream(out, rank=rank, world=2, workers=workers, batch=batch), num_workers=workers)
        have.append(sum(1 for item in items if not item.get("tail")))
    assert have[0] != have[1] and min(have) % agree_every  # runs out mid-block
    config = yaml.safe_load(TINY)
    config["data"] |= {"shards": str(out), "num_workers": workers, "max_damaged_share": 0.5}  # about 30% is damaged
    config["train"] |= {"run_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": batch}
    config["train"] |= {"agree_every_steps": agree_every, "log_every_steps": 1}
    config["eval"] = {"every_epochs": 0}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = [*DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "launcher.train"]
    result = subprocess.run(
        [*command, "--config", str(tmp_path / "config.yaml")], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"epoch 0: a rank ran out of data after {min(have)} batches" in result.stdout
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in records if "loss" in r] == list(range(1, min(have) + 1))
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
