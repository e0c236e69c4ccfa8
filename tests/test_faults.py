"""Faults on a real 2-rank run through launcher/train.sh (deepspeed launcher, gloo on the CPU).

A rank killed with SIGKILL while a checkpoint is being written fails the whole job within seconds, with one
line naming the lost rank; `latest` still points at the previous, complete checkpoint, and the same command
resumes from it and finishes with only `train.keep_checkpoints` checkpoints left. A rank that stops answering
without dying (SIGSTOP) fails the job once the collective timeout runs out, again naming it; and when the
backend itself would wait forever, the heartbeat ends the rank that waits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engine.config import ConfigError, load_config
from tests.cluster_runs import BATCHES_PER_EPOCH, REPO, free_port, records, start_train_sh, tiny_workspace, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.multirank]
RANK_FILES = ("train_state.json", "model.safetensors", "rank00000_state.safetensors", "rank00001_state.safetensors")


def rank_process(launcher, rank: int) -> psutil.Process:
    """The process of local rank `rank` under launcher/train.sh."""

    def find():
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(launcher.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if f"--local_rank={rank}" in child.cmdline() and "launcher.train" in child.cmdline():
                        return child
        return None

    return wait_for(find, f"rank {rank} to start", timeout_s=120, processes=[launcher])


def kill_tree(launcher) -> None:
    """Leaves nothing of a run behind, whatever the test did to it."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in [*psutil.Process(launcher.pid).children(recursive=True), psutil.Process(launcher.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    launcher.wait(timeout=60)


def latest_checkpoint(run_dir: Path) -> tuple[str, int]:
    """The tag `latest` names and its optimizer step ("", 0 before the first checkpoint)."""
    latest = run_dir / "checkpoints" / "latest"
    if not latest.is_file():
        return "", 0
    tag = latest.read_text().strip()
    state = json.loads((run_dir / "checkpoints" / tag / "train_state.json").read_text())
    return tag, state["epoch"] * BATCHES_PER_EPOCH + state["batches_done"]


def test_sigkill_mid_checkpoint_fails_fast_naming_the_rank_and_the_same_command_resumes(tmp_path):
    workspace = tiny_workspace(tmp_path)
    run_dir = tmp_path / "run"
    command = dict(
        CONFIG=str(workspace["config"]),
        GPUS_PER_NODE="2",
        MASTER_PORT=str(free_port()),
        OVERRIDES=f"train.run_dir={run_dir} train.epochs=6 eval.every_epochs=0 train.log_every_steps=1 "
        "train.checkpoint_every_steps=3 train.keep_checkpoints=2 train.collective_timeout_s=120",
    )
    # Each rank stops inside the save of step 9 (the third checkpoint) and says so with a file: the kill lands
    # mid-save by construction, not by a race against the clock (engine/runtime/checkpoint.py, _hold_for_fault_injection).
    holding = tmp_path / "holding"
    writing = f"step{9:08d}"
    launcher = start_train_sh(tmp_path / "killed.log", **command, TBPS_FAULT_HOLD_SAVE=f"{writing}:{holding}")
    try:
        victim = rank_process(launcher, 1)
        wait_for(
            lambda: (holding / "rank1.holding").is_file(), "rank 1 inside the save", timeout_s=600, processes=[launcher]
        )
        complete_before, _ = latest_checkpoint(run_dir)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        launcher.wait(timeout=300)
        failed_after = time.monotonic() - killed_at
    finally:
        kill_tree(launcher)
    log = (tmp_path / "killed.log").read_text()
    print(f"SIGKILL of rank 1 while {writing} was being written -> job failed after {failed_after:.1f} s")

    assert launcher.returncode != 0
    lost = [line for line in log.splitlines() if line.startswith("error: lost rank")]
    assert lost == [lost[0]] and f"lost rank 1 (host {socket.gethostname()}, pid {victim.pid})" in lost[0], log[-3000:]
    assert "its heartbeat stopped" in lost[0]  # named by the heartbeat, not left to the 120 s collective timeout
    tag, resume_step = latest_checkpoint(run_dir)
    assert tag == complete_before == f"step{6:08d}"  # `latest` still names the last complete checkpoint
    assert all((run_dir / "checkpoints" / tag / name).is_file() for name in RANK_FILES)

    rerun_started = time.time()
    rerun = start_train_sh(tmp_path / "rerun.log", **command)
    try:
        rerun.wait(timeout=600)
    finally:
        kill_tree(rerun)
    log = (tmp_path / "rerun.log").read_text()
    assert rerun.returncode == 0, log[-3000:]
    assert f"step {resume_step}\n" in log and "resumed from epoch" in log
    resumed = [r["step"] for r in records(run_dir) if "loss" in r and r["time"] > rerun_started]
    assert resumed[0] == resume_step + 1 and resumed[-1] == 6 * BATCHES_PER_EPOCH
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if (p / "train_state.json").is_file())
    assert kept == ["epoch0006", f"step{6 * BATCHES_PER_EPOCH:08d}"]  # pruned to train.keep_checkpoints=2


def test_a_rank_that_stops_answering_fails_the_job_at_the_collective_timeout(tmp_path):
    workspace = tiny_workspace(tmp_path)
    run_dir = tmp_path / "run"
    launcher = start_train_sh(
        tmp_path / "stopped.log",
        CONFIG=str(workspace["config"]),
        GPUS_PER_NODE="2",
        MASTER_PORT=str(free_port()),
        OVERRIDES=f"train.run_dir={run_dir} train.epochs=6 eval.every_epochs=0 train.log_every_steps=1 "
        "train.collective_timeout_s=20",
    )
    try:
        victim = rank_process(launcher, 1)
        wait_for(lambda: len(records(run_dir)) >= 3, "three steps", timeout_s=300, processes=[launcher])
        victim.send_signal(signal.SIGSTOP)  # alive, holding its sockets open, answering nothing
        stopped_at = time.monotonic()
        launcher.wait(timeout=300)
        failed_after = time.monotonic() - stopped_at
    finally:
        kill_tree(launcher)
    log = (tmp_path / "stopped.log").read_text()
    print(f"SIGSTOP of rank 1 -> job failed after {failed_after:.1f} s (collective timeout 20 s)")

    assert launcher.returncode != 0
    assert f"error: lost rank 1 (host {socket.gethostname()}, pid {victim.pid})" in log, log[-3000:]
    assert failed_after >= 20  # only the timeout ends a collective whose peer keeps its connection open


WAITING_RANK = """
import os, sys, time, torch.distributed as dist
from engine.runtime import liveness
dist.init_process_group("gloo")
liveness.start_heartbeat(give_up_after_s=3)
print("ready", flush=True)
time.sleep(300)  # a wait that no backend timeout ends
"""


def test_the_heartbeat_ends_a_rank_whose_peer_went_silent_when_nothing_else_would(tmp_path):
    port = str(free_port())
    ranks = []
    for rank in (0, 1):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank), "WORLD_SIZE": "2"}
        ranks.append(
            subprocess.Popen(
                [sys.executable, "-c", WAITING_RANK],
                cwd=REPO,
                env=os.environ | env | {"PYTHONUNBUFFERED": "1"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        assert all(rank.stdout.readline().strip() == "ready" for rank in ranks)
        ranks[1].send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        _, err = ranks[0].communicate(timeout=120)
        ended_after = time.monotonic() - stopped_at
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert ranks[0].returncode == 1, err
    assert lines[0].startswith(f"error: lost rank 1 (host {socket.gethostname()}, pid {ranks[1].pid})"), err
    assert lines[1].startswith("error: rank 0 stops: rank 1") and "train.collective_timeout_s=3 s" in lines[1], err
    assert ended_after >= 3  # SILENCE_S of silence, then the 3 s timeout


def test_the_timeout_and_the_wandb_mode_are_checked_fields():
    with pytest.raises(ConfigError, match=r"^train.collective_timeout_s must be > 0 \(got 0.0\)$"):
        load_config(None, ["train.collective_timeout_s=0"])
    with pytest.raises(ConfigError, match=r"^log.wandb must be one of offline, online, disabled \(got 'cloud'\)$"):
        load_config(None, ["log.wandb=cloud"])
