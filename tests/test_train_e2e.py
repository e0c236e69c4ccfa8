"""The real entry points end to end: synthetic data -> shards -> 2-rank DeepSpeed training -> eval,
and a run stopped mid-epoch then resumed, which must reach the uninterrupted run's parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data.pack import pack
from data.synthetic import generate
from tests.helpers import BATCHES_PER_EPOCH, DEEPSPEED, REPO, SOURCES, TINY, free_port

pytestmark = [pytest.mark.slow, pytest.mark.multirank]


def run(command: list[str]) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def train_in_one_process(config: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """The entry point without the deepspeed launcher: rank 0 of 1."""
    return run([sys.executable, "-m", "launcher.train", "--config", str(config), f"train.run_dir={run_dir}", *extra])


def on_two_ranks(module: str, *args: str) -> subprocess.CompletedProcess:
    """`deepspeed --num_gpus 2 --module MODULE ARGS` on this CPU machine (gloo)."""
    return run([*DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--module", module, *args])


def train_on_two_ranks(config: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return on_two_ranks("launcher.train", "--config", str(config), f"train.run_dir={run_dir}", *extra)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    generate(root / "synthetic", seed=0, train_images=48, test_identities=8, images_per_test_identity=2, progress=False)
    raw = root / "synthetic" / "luperson_mllm"
    pack(raw / "imgs", [raw / f"{s}.json" for s in SOURCES], root / "shards", images_per_shard=12)
    config = root / "tiny.yaml"
    config.write_text(
        TINY.replace("SHARDS", str(root / "shards")).replace("CUHK", str(root / "synthetic" / "cuhk_pedes"))
    )
    return {"root": root, "config": config, "cuhk": root / "synthetic" / "cuhk_pedes"}


@pytest.fixture(scope="module")
def uninterrupted_run(workspace) -> Path:
    run_dir = workspace["root"] / "uninterrupted"
    train_on_two_ranks(workspace["config"], run_dir)
    return run_dir


def test_two_ranks_train_with_falling_loss_then_eval(uninterrupted_run: Path, workspace):
    lines = [json.loads(line) for line in (uninterrupted_run / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in lines if "step" in r]
    exchanges = [r for r in lines if "noise_exchange_s" in r]
    assert [r["epoch"] for r in exchanges] == [0, 1]  # the noise table is exchanged between epochs
    assert [r["step"] for r in records][-1] == 3 * BATCHES_PER_EPOCH
    by_epoch = [[r["loss"] for r in records if r["epoch"] == e] for e in range(3)]
    assert sum(by_epoch[2]) / len(by_epoch[2]) < sum(by_epoch[0]) / len(by_epoch[0])
    # Shards move between ranks every epoch; every caption scored in epoch e is still found in e+1.
    assert all(r["unscored_captions"] == 0 for r in records)
    assert (uninterrupted_run / "final" / "model.safetensors").is_file()
    assert (uninterrupted_run / "checkpoints" / "latest").read_text() == "epoch0003"

    # In-training eval: val and test of the synthetic CUHK-PEDES after every epoch, extracted on both ranks;
    # the best checkpoint follows validation R1 only.
    evals = [r for r in lines if "eval" in r]
    assert [(r["epoch"], r["split"]) for r in evals] == [(e, s) for e in range(3) for s in ("val", "test")]
    assert all(r["selects_best"] == (r["split"] == "val") for r in evals)
    best = json.loads((uninterrupted_run / "checkpoints" / "best.json").read_text())
    best_val = max((r for r in evals if r["split"] == "val"), key=lambda r: (r["R1"], -r["epoch"]))
    assert (best["tag"], best["split"], best["R1"]) == (best_val["tag"], "val", best_val["R1"])
    assert (uninterrupted_run / "checkpoints" / best["tag"]).is_dir()

    out = workspace["root"] / "eval.json"
    result = run(
        [
            sys.executable,
            "-m",
            "eval",
            "--checkpoint",
            str(uninterrupted_run),
            "--dataset",
            "cuhk-pedes",
            "--root",
            str(workspace["cuhk"]),
            "--out",
            str(out),
        ]
    )
    assert "R1" in result.stdout and "mINP" in result.stdout
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) >= {"R1", "R5", "R10", "mAP", "mINP"}
    assert 0.0 <= metrics["R1"] <= metrics["R5"] <= metrics["R10"] <= 100.0
    assert json.loads(out.read_text())["stats"] == {"ids": 8, "images": 16, "captions": 32, "missing_images": 0}


def test_stopped_and_resumed_run_reaches_the_same_parameters(uninterrupted_run: Path, workspace):
    run_dir = workspace["root"] / "resumed"
    stop_at = BATCHES_PER_EPOCH + 4  # mid-epoch 1: optimizer, scheduler, noise table and data position all matter
    train_on_two_ranks(workspace["config"], run_dir, f"train.max_steps={stop_at}")
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step{stop_at:08d}"
    assert not (run_dir / "final").exists()
    resumed = train_on_two_ranks(workspace["config"], run_dir, "--resume", "latest")
    assert f"resumed from epoch 1, batch 4, step {stop_at}" in resumed.stdout

    expected = load_file(str(uninterrupted_run / "final" / "model.safetensors"))
    got = load_file(str(run_dir / "final" / "model.safetensors"))
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


def test_zero_stage_2_matches_stage_0(uninterrupted_run: Path, workspace):
    """ZeRO-2 partitions optimizer state and gradients across the 2 ranks; in fp32 the math is unchanged."""
    run_dir = workspace["root"] / "zero2"
    train_on_two_ranks(workspace["config"], run_dir, "train.zero_stage=2", f"train.max_steps={BATCHES_PER_EPOCH}")
    expected = load_file(str(uninterrupted_run / "checkpoints" / "epoch0001" / "model.safetensors"))
    got = load_file(str(run_dir / "checkpoints" / f"step{BATCHES_PER_EPOCH:08d}" / "model.safetensors"))
    # The key bias has a mathematically zero gradient (softmax ignores it), so Adam turns rounding noise into its
    # updates; elsewhere Adam only amplifies reduction-order noise in rarely used rows, so compare per-tensor norms.
    for name in [n for n in expected if not n.endswith("k_proj.bias")]:
        relative = float((got[name] - expected[name]).norm() / expected[name].norm().clamp(min=1e-12))
        assert relative < 1e-4, f"{name}: relative difference {relative:.2e}"


def test_single_process_without_the_launcher_in_bf16(workspace):
    run_dir = workspace["root"] / "bf16"
    result = train_in_one_process(
        workspace["config"], run_dir, "train.precision=bf16", "train.max_steps=3", "eval.rstpreid=/nowhere/RSTPReid"
    )
    assert "1 rank(s)" in result.stdout and "precision=bf16" in result.stdout
    assert result.stdout.count("eval.rstpreid root /nowhere/RSTPReid does not exist: rstpreid is not evaluated") == 1
    weights = load_file(str(run_dir / "checkpoints" / "step00000003" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())  # exported in fp32 whatever the training precision


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.shards=/nowhere/shards", "no manifest.json in shard folder /nowhere/shards"),
        ("model.pretrained=/nowhere/ViT-B-16.pt", "/nowhere/ViT-B-16.pt"),
    ],
)
def test_bad_paths_stop_with_one_line(workspace, override: str, message: str):
    command = [
        sys.executable,
        "-m",
        "launcher.train",
        "--config",
        str(workspace["config"]),
        f"train.run_dir={workspace['root'] / 'bad'}",
        override,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stderr


def test_resume_on_another_world_size_reshards_the_noise_table(uninterrupted_run: Path, workspace):
    """A 2-rank checkpoint resumed by 1 process: the table's rows move to the new owner and the epoch
    restarts; every caption still finds the scores of the previous epoch."""
    run_dir = workspace["root"] / "one_rank"
    checkpoint = uninterrupted_run / "checkpoints" / "epoch0002"
    result = train_in_one_process(workspace["config"], run_dir, "--resume", str(checkpoint))
    assert "written by 2 ranks, this run has 1: the noise table is re-sharded" in result.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    assert steps and all(r["epoch"] == 2 for r in steps)
    assert all(r["unscored_captions"] == 0 for r in steps)
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_eval_cli_on_two_ranks_gives_the_single_process_numbers(uninterrupted_run: Path, workspace):
    single, parallel = workspace["root"] / "eval_one.json", workspace["root"] / "eval_two.json"
    common = ["--checkpoint", str(uninterrupted_run), "--dataset", "cuhk-pedes", "--root", str(workspace["cuhk"])]
    run([sys.executable, "-m", "eval", *common, "--out", str(single)])
    result = on_two_ranks("eval", *common, "--out", str(parallel))
    assert result.stdout.count("    R1      R5") == 1  # rank 0 alone reports
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert json.loads(parallel.read_text())["metrics"][key] == pytest.approx(
            json.loads(single.read_text())["metrics"][key], abs=1e-6
        )


def test_fine_tune_on_a_benchmark_train_split_from_our_pretrained_model(uninterrupted_run: Path, workspace):
    """The benchmark's train split packed with its pids (several images per identity), trained from the
    pretrained run's exported model, evaluated on its val and test splits."""
    from data.pack_dataset import pack_dataset

    shards = workspace["root"] / "cuhk_train_shards"
    manifest = pack_dataset("cuhk-pedes", workspace["cuhk"], shards, images_per_shard=6)
    assert (manifest["num_images"], manifest["identities"], manifest["num_captions"]) == (16, 8, 32)
    run_dir = workspace["root"] / "finetune"
    result = train_in_one_process(
        workspace["config"],
        run_dir,
        f"data.shards={shards}",
        f"model.pretrained={uninterrupted_run / 'final'}",
        "nam.masking=none",
        "train.epochs=2",
    )
    assert "1 rank(s), 4 batches/epoch" in result.stdout
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in lines if "eval" in r] == [
        (e, s) for e in range(2) for s in ("val", "test")
    ]
    start = load_file(str(uninterrupted_run / "final" / "model.safetensors"))
    tuned = load_file(str(run_dir / "final" / "model.safetensors"))
    assert any(not torch.equal(start[k], tuned[k]) for k in start)  # it trained from the pretrained weights


def test_resume_with_two_data_workers_per_rank_continues_exactly(workspace):
    """2 ranks x 2 DataLoader workers, stopped at an odd batch of epoch 1 (the workers deliver in turn, so the
    resumed loader must start with the other worker) then resumed: the uninterrupted run's parameters."""
    two_workers = ("data.num_workers=2", "train.epochs=2")
    whole, stopped = workspace["root"] / "workers_whole", workspace["root"] / "workers_stopped"
    train_on_two_ranks(workspace["config"], whole, *two_workers)
    stop_at = BATCHES_PER_EPOCH + 5
    train_on_two_ranks(workspace["config"], stopped, *two_workers, f"train.max_steps={stop_at}")
    resumed = train_on_two_ranks(workspace["config"], stopped, *two_workers, "--resume", "latest")
    assert f"resumed from epoch 1, batch 5, step {stop_at}" in resumed.stdout
    expected = load_file(str(whole / "final" / "model.safetensors"))
    got = load_file(str(stopped / "final" / "model.safetensors"))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    records = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    problems = [r for r in records if "data_problems" in r]
    assert [r["epoch"] for r in problems] == [0, 1] and not any(any(r["data_problems"].values()) for r in problems)


def test_training_reads_mds_shards(workspace):
    raw = workspace["root"] / "synthetic" / "luperson_mllm"
    shards = workspace["root"] / "mds_shards"
    pack(raw / "imgs", [raw / f"{s}.json" for s in SOURCES], shards, images_per_shard=12, fmt="mds")
    run_dir = workspace["root"] / "from_mds"
    result = train_on_two_ranks(workspace["config"], run_dir, f"data.shards={shards}", "train.epochs=2")
    assert f"{BATCHES_PER_EPOCH} batches/epoch" in result.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= 4 and losses[-1] < losses[0]
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_mid_epoch_resume_on_another_world_size_runs_only_the_rest_of_the_epoch(workspace):
    """A 2-rank run stopped 4 batches into epoch 1 (2 ranks x 4 x 8 = 64 of its 192 captions trained), resumed
    by 1 process: it trains the other 128 captions of epoch 1 in a new order (16 batches of 8), then epoch 2."""
    run_dir = workspace["root"] / "rest_of_epoch"
    stop_at = BATCHES_PER_EPOCH + 4
    train_on_two_ranks(workspace["config"], run_dir, f"train.max_steps={stop_at}", "eval.every_epochs=0")
    result = train_in_one_process(workspace["config"], run_dir, "eval.every_epochs=0", "--resume", "latest")
    assert "the rest of epoch 1 runs in a new order, leaving out the captions already trained on" in result.stdout
    assert "epoch 1: a rank ran out of data after 16 batches" in result.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in records if r.get("epoch") == 1 and "batch" in r]
    assert resumed[-1]["batch"] == 16 and all(r["unscored_captions"] == 0 for r in resumed)


def test_a_run_leaves_no_shared_memory_segments_behind(workspace):
    """DeepSpeed's CPU all-reduce maps a 69 MB /dev/shm segment per rank and never unlinks it; ours does."""
    port = free_port()
    run_dir = workspace["root"] / "shm"
    run(
        [*DEEPSPEED, "--num_gpus", "2", "--master_port", str(port), "--module", "launcher.train"]
        + ["--config", str(workspace["config"]), f"train.run_dir={run_dir}", "train.max_steps=2", "eval.every_epochs=0"]
    )
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000002"
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
