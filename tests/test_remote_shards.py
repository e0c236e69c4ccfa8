"""Shards in object storage, against a real S3-compatible server (moto's, on 127.0.0.1, started by the s3_server
fixture): packing uploads, both formats stream from s3:// and http:// into a local cache as they do from a folder,
the cache is shared by processes, and a server that goes away is waited for or named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.caption_stream import PROBLEMS, CaptionSampleStream, make_loader
from data.object_store import RetryPolicy, ShardCache, s3_client
from data.pack import main as pack_main
from tests.helpers import (
    REPO,
    S3_SECRET,
    TINY,
    caption_files,
    files_containing,
    http_folder_server,
    run_on_ranks,
    stream,
)

REMOTE = "s3://shards/luperson"
FAST_RETRY = RetryPolicy(attempts=6, first_wait_s=0.2, max_wait_s=2.0, timeout_s=10.0)


def pack_to_s3(caption_set_dir: Path, stage: Path, *, fmt: str = "wds", per_shard: int = 12, capsys=None) -> int:
    return pack_main(
        [
            "--images", str(caption_set_dir / "imgs"), "--captions", *map(str, caption_files(caption_set_dir)),
            "--out", REMOTE, "--stage", str(stage), "--format", fmt, "--images-per-shard", str(per_shard),
            "--workers", "1",
        ]
    )  # fmt: skip


def remote_stream(cache: Path, remote: str, *, workers: int = 0, world: int = 1, rank: int = 0, epoch: int = 0,
                  interleave: int = 4, policy: RetryPolicy = FAST_RETRY) -> CaptionSampleStream:  # fmt: skip
    return stream(
        cache, remote=remote, policy=policy, workers=workers, world=world, rank=rank, epoch=epoch,
        shuffle_buffer=16, interleave=interleave,
    )  # fmt: skip


def read_epoch(data: CaptionSampleStream, *, workers: int = 0) -> tuple[list[int], dict[str, int], list[str]]:
    """Caption ids of every batch, the problem counts, and any halt messages, over one epoch."""
    ids, problems, halts = [], [0] * len(PROBLEMS), []
    for item in make_loader(data, num_workers=workers):
        if item.get("halt"):
            halts.append(item["halt"])
            continue
        problems = [a + int(b) for a, b in zip(problems, item["problems"], strict=True)]
        if not item.get("tail"):
            ids += item["caption_id"].tolist()
    return ids, dict(zip(PROBLEMS, problems, strict=True)), halts


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_pack_uploads_every_shard_before_the_manifest_and_a_rerun_sends_nothing_twice(
    caption_set_dir: Path, tmp_path: Path, s3_server, fmt: str
):
    assert pack_to_s3(caption_set_dir, tmp_path / "stage", fmt=fmt) == 0
    puts = [p.removeprefix("/shards/luperson/") for p in s3_server.puts]
    manifest = json.loads((tmp_path / "stage" / "manifest.json").read_text())
    assert puts[-1] == "manifest.json"
    assert {p.split("/")[0] for p in puts[:-1]} >= {s["name"] for s in manifest["shards"]}
    s3_server.puts.clear()
    assert pack_to_s3(caption_set_dir, tmp_path / "stage", fmt=fmt) == 0  # the rerun of a finished upload
    assert s3_server.puts == []  # every object is there with its sha256


def test_an_interrupted_upload_is_completed_by_the_same_command(caption_set_dir: Path, tmp_path: Path, s3_server):
    assert pack_to_s3(caption_set_dir, tmp_path / "stage") == 0
    client = s3_client()
    for key in ("luperson/manifest.json", "luperson/shard-000002.tar"):  # as if it stopped before these two
        client.delete_object(Bucket="shards", Key=key)
    s3_server.puts.clear()
    assert pack_to_s3(caption_set_dir, tmp_path / "stage") == 0
    assert s3_server.puts == ["/shards/luperson/shard-000002.tar", "/shards/luperson/manifest.json"]


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_both_formats_stream_from_s3_as_from_the_local_folder(caption_set_dir: Path, tmp_path: Path, s3_server, fmt):
    """Same batches in the same order, the same counts, from a cold cache and from the warm one."""
    assert pack_to_s3(caption_set_dir, tmp_path / "stage", fmt=fmt) == 0
    local = read_epoch(remote_stream(tmp_path / "stage", None, workers=2), workers=2)
    assert len(local[0]) == len(set(local[0])) > 0
    cold = read_epoch(remote_stream(tmp_path / "cache", REMOTE, workers=2), workers=2)
    warm = read_epoch(remote_stream(tmp_path / "cache", REMOTE, workers=2), workers=2)
    assert cold == local and warm == local
    assert all(n == 1 for n in s3_server.gets_under("/shards/luperson/").values())  # the warm epoch fetched nothing


def test_wds_shards_stream_from_an_http_server(caption_set_dir: Path, tmp_path: Path, s3_server):
    assert pack_to_s3(caption_set_dir, tmp_path / "stage") == 0
    local = read_epoch(remote_stream(tmp_path / "stage", None))
    with http_folder_server(tmp_path / "stage") as url:
        assert read_epoch(remote_stream(tmp_path / "cache", f"{url}/")) == local


def test_a_server_that_comes_back_mid_epoch_loses_and_repeats_nothing(
    caption_set_dir: Path, tmp_path: Path, s3_server, caplog
):
    assert pack_to_s3(caption_set_dir, tmp_path / "stage", per_shard=4) == 0  # 12 shards, read one at a time
    local = read_epoch(remote_stream(tmp_path / "stage", None, interleave=1))
    s3_server.outage(after_gets=1 + 4, down_for=1.0)  # the manifest and 4 shards, then 1 s of refused connections
    got = read_epoch(remote_stream(tmp_path / "cache", REMOTE, interleave=1))
    assert got == local and not any(got[1].values())
    assert "attempt 2 of 6" in caplog.text  # it did wait for the server
    assert all(n == 1 for n in s3_server.gets_under("/shards/luperson/").values())


def test_a_server_that_stays_down_ends_the_stream_with_one_line_naming_endpoint_and_shard(
    caption_set_dir: Path, tmp_path: Path, s3_server
):
    assert pack_to_s3(caption_set_dir, tmp_path / "stage", per_shard=4) == 0
    s3_server.outage(after_gets=1 + 4)
    policy = RetryPolicy(attempts=3, first_wait_s=0.1, timeout_s=5.0)
    ids, problems, halts = read_epoch(remote_stream(tmp_path / "cache", REMOTE, interleave=1, policy=policy))
    assert len(halts) == 1 and "\n" not in halts[0]
    assert f"S3 endpoint {s3_server.endpoint}" in halts[0] and ".tar of s3://shards/luperson" in halts[0]
    assert S3_SECRET not in halts[0] and not any(problems.values())  # nothing counted as damaged data


def test_a_shard_changed_on_the_server_is_reported_by_its_hash(
    caption_set_dir: Path, tmp_path: Path, s3_server, capsys
):
    assert pack_to_s3(caption_set_dir, tmp_path / "stage") == 0
    changed = (tmp_path / "stage" / "shard-000001.tar").read_bytes() + bytes(1024)  # a valid tar, other bytes
    s3_client().put_object(Bucket="shards", Key="luperson/shard-000001.tar", Body=changed)
    ids, problems, _ = read_epoch(remote_stream(tmp_path / "cache", REMOTE))
    assert problems["changed_shard"] == 1 and sum(problems.values()) == 1
    assert "changed_shard shard-000001.tar" in capsys.readouterr().out
    assert len(ids) == len(read_epoch(remote_stream(tmp_path / "stage", None))[0])  # its records were still read


def read_as_rank(rank: int, world: int, cache: Path, epochs: int) -> list[int]:
    ids = []
    for epoch in range(epochs):
        ids += read_epoch(remote_stream(cache, REMOTE, world=world, rank=rank, epoch=epoch, workers=2), workers=2)[0]
    return ids


@pytest.mark.slow  # about 2 minutes per format on 2 cores
@pytest.mark.multirank
@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_two_ranks_sharing_a_node_cache_fetch_each_file_once(caption_set_dir: Path, tmp_path: Path, s3_server, fmt):
    """Two ranks with two data workers each, three epochs (each shard is read by both ranks at some point)."""
    assert pack_to_s3(caption_set_dir, tmp_path / "stage", fmt=fmt, per_shard=6) == 0
    read = run_on_ranks(2, read_as_rank, tmp_path / "cache", 3)
    assert all(read)
    gets = s3_server.gets_under("/shards/luperson/")
    shards = json.loads((tmp_path / "stage" / "manifest.json").read_text())["shards"]
    assert {name.split("/")[0] for name in gets} >= {s["name"] for s in shards} | {"manifest.json"}
    assert set(gets.values()) == {1}, gets


def train(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "launcher.train", "--config", str(config), *overrides]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_training_from_s3_stops_when_the_server_stays_down_and_resumes_losing_nothing(
    caption_set_dir: Path, tmp_path: Path, s3_server
):
    """wds shards of 2 images read one at a time: the server goes away after the manifest and 8 shards, the run stops
    with a checkpoint and one line naming the endpoint and the shard; resumed once the server is back, it ends with
    every batch of both epochs trained and nothing counted as damaged. The test secret is in no output or file."""
    assert pack_to_s3(caption_set_dir, tmp_path / "stage", per_shard=2) == 0
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("SHARDS", str(tmp_path / "cache")).replace("CUHK", str(tmp_path / "no_eval")))
    run_dir = tmp_path / "run"
    overrides = [
        f"train.run_dir={run_dir}", f"data.remote={REMOTE}", "data.interleave_shards=1", "data.spread_captions=false",
        "data.shuffle_buffer=8", "data.fetch_attempts=3", "data.fetch_first_wait_s=0.1", "train.agree_every_steps=1",
        "train.epochs=2",
    ]  # fmt: skip
    s3_server.outage(after_gets=1 + 8)
    stopped = train(config, *overrides)
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"S3 endpoint {s3_server.endpoint}" in lines[0] and "shard-" in lines[0], lines
    step = int((run_dir / "checkpoints" / "latest").read_text().removeprefix("step"))
    assert 0 < step < 24  # mid-epoch 0: 48 images x 4 captions / batch 8 = 24 batches an epoch

    s3_server.start()
    resumed = train(config, *overrides, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from epoch 0, batch {step}, step {step}" in resumed.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    problems = [r for r in records if "data_problems" in r]
    assert [r["epoch"] for r in problems] == [0, 1] and not any(any(r["data_problems"].values()) for r in problems)
    assert max(r["step"] for r in records if "step" in r) == 48 and (run_dir / "final" / "model.safetensors").is_file()
    outputs = stopped.stdout + stopped.stderr + resumed.stdout + resumed.stderr
    assert S3_SECRET not in outputs and not files_containing(tmp_path, S3_SECRET)


@pytest.mark.slow
def test_training_reads_mds_shards_from_s3(caption_set_dir: Path, tmp_path: Path, s3_server):
    assert pack_to_s3(caption_set_dir, tmp_path / "stage", fmt="mds") == 0
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("SHARDS", str(tmp_path / "cache")).replace("CUHK", str(tmp_path / "no_eval")))
    result = train(config, f"train.run_dir={tmp_path / 'run'}", f"data.remote={REMOTE}", "train.epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "24 batches/epoch" in result.stdout and (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert S3_SECRET not in result.stdout + result.stderr and not files_containing(tmp_path, S3_SECRET)


def test_s3_without_boto3_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "boto3", None)  # a PyTorch image without the s3 extra
    with pytest.raises(ValueError, match=r"s3://bucket/shards is an s3:// location, which needs boto3: pip install"):
        ShardCache("s3://bucket/shards", tmp_path / "cache")
    ShardCache("https://example.org/shards", tmp_path / "cache")  # http(s) needs nothing more
