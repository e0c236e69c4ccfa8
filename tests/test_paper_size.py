"""The paper's model end to end on the CPU: configs/pretrain_luperson_mllm.yaml itself (ViT-B/16 at 384x128,
77 tokens, NAM) on 2 gloo ranks, 3 steps at batch 2 per rank from synthetic shards of pedestrian-sized images,
then a resume for a 4th step. Random init: no CLIP weights are at hand.

Overrides beyond the data path, batch size, steps and run dir: model.pretrained=null (the config names a local
weights file) and train.log_every_steps=1 (the config logs every 10 steps; 3 steps would log nothing)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from data.pack import pack
from data.synthetic import generate
from engine.method.noise_table import UNSCORED
from tests.helpers import DEEPSPEED, REPO, SOURCES

pytestmark = [pytest.mark.slow, pytest.mark.multirank]
PAPER_CONFIG = REPO / "configs" / "pretrain_luperson_mllm.yaml"
IMAGES = 32  # 16 shards of 2 images: one shard per data worker (the config's 8 per rank, 2 ranks)
PEDESTRIAN_SIZE = (256, 96)  # (H, W): a typical LUPerson crop, resized to 384x128 by the transform
RSS_BUDGET_GIB = 8.0  # per rank; 2 ranks must fit a 24 GB machine alongside everything else


def rank_peak_rss(launcher: subprocess.Popen) -> dict[int, int]:
    """Polls the ranks under `launcher` until it exits: local rank -> peak RSS in bytes (VmHWM, a high-water mark,
    so the last reading before a rank exits is its peak)."""
    peaks: dict[int, int] = {}
    while launcher.poll() is None:
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                cmdline = (status.parent / "cmdline").read_bytes().split(b"\0")
                local_rank = next(
                    (int(a.split(b"=")[1]) for a in cmdline if a.startswith(b"--local_rank=")),
                    None,
                )
                if local_rank is None or not any(a == b"launcher.train" for a in cmdline):
                    continue
                text = status.read_text()
            except (OSError, ValueError):
                continue  # the process ended while being read
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    peaks[local_rank] = max(peaks.get(local_rank, 0), int(line.split()[1]) * 1024)
        time.sleep(0.5)
    return peaks


def train_paper_config(shards: Path, run_dir: Path, *extra: str, port: int) -> tuple[str, dict[int, int], float]:
    command = [*DEEPSPEED, "--num_gpus", "2", "--master_port", str(port), "--module", "launcher.train"]
    command += [
        "--config",
        str(PAPER_CONFIG),
        f"data.shards={shards}",
        "train.batch_size=2",
        f"train.run_dir={run_dir}",
    ]
    command += ["model.pretrained=null", "train.log_every_steps=1", *extra]
    started = time.perf_counter()
    log = run_dir.with_suffix(".log")
    with log.open("w") as out:
        launcher = subprocess.Popen(
            command, cwd=REPO, env=os.environ | {"PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            peaks = rank_peak_rss(launcher)
        finally:
            if launcher.poll() is None:
                launcher.kill()
            launcher.wait(timeout=60)
    text = log.read_text()
    assert launcher.returncode == 0, f"{command} failed:\n{text[-4000:]}"
    return text, peaks, time.perf_counter() - started


def test_paper_config_trains_scores_checkpoints_and_resumes_on_two_cpu_ranks(tmp_path: Path, record_property):
    from tests.helpers import free_port

    generate(
        tmp_path / "synthetic",
        seed=0,
        train_images=IMAGES,
        test_identities=2,
        images_per_test_identity=2,
        size=PEDESTRIAN_SIZE,
        progress=False,
    )
    raw = tmp_path / "synthetic" / "luperson_mllm"
    shards = tmp_path / "shards"
    pack(raw / "imgs", [raw / f"{s}.json" for s in SOURCES], shards, images_per_shard=2)
    run_dir = tmp_path / "run"

    first, peaks, first_s = train_paper_config(shards, run_dir, "train.max_steps=3", port=free_port())
    assert "2 rank(s)" in first and "masking=nam" in first and "precision=fp32" in first
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    checkpoint = run_dir / "checkpoints" / "step00000003"
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000003"
    weights = load_file(str(checkpoint / "model.safetensors"))
    assert weights["vision_model.embeddings.position_embedding.weight"].shape == (24 * 8 + 1, 768)  # 384x128 / 16
    assert weights["text_model.embeddings.position_embedding.weight"].shape == (77, 512)
    for rank in (0, 1):  # NAM scored every caption each rank trained on: 3 steps x 2 captions
        state = load_file(str(checkpoint / f"rank{rank:05d}_state.safetensors"))
        codes = state["noise_table.pending_codes"]
        assert codes.shape == (6, 77) and len(set(state["noise_table.pending_ids"].tolist())) == 6
        assert ((codes != UNSCORED).sum(dim=1) >= 3).all()  # SOT, EOT and at least one word scored per caption

    resumed, resumed_peaks, resumed_s = train_paper_config(
        shards, run_dir, "train.max_steps=4", "--resume", "latest", port=free_port()
    )
    assert "resumed from epoch 0, batch 3, step 3" in resumed
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000004"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r][-1] == 4

    assert sorted(peaks) == [0, 1], f"ranks not seen while polling: {peaks}"
    gib = {rank: round(peak / 2**30, 2) for rank, peak in sorted(peaks.items())}
    print(
        f"\npaper config on 2 CPU ranks: peak RSS per rank {gib} GiB; 3 steps {first_s:.0f} s, resume {resumed_s:.0f} s"
    )
    record_property("peak_rss_gib_per_rank", gib)
    record_property("wall_s", {"three_steps": round(first_s), "resume_one_step": round(resumed_s)})
    assert max(list(peaks.values()) + list(resumed_peaks.values())) < RSS_BUDGET_GIB * 2**30
