"""launcher/slurm/*.sbatch on a real single-node Slurm cluster started for these tests (tests/slurm_cluster.py):
a 2-task pretraining job runs to the end and its model is scored by eval.sbatch; a job signalled as Slurm
signals it ahead of the time limit (`--signal=B:USR1@N`: SIGUSR1 to the batch script), or preempted by a job
of a higher-priority partition (SIGTERM to its tasks), saves a checkpoint, requeues itself, and the requeued
job resumes from the saved step and finishes."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.cluster_runs import BATCHES_PER_EPOCH, REPO, free_port, records, tiny_workspace, wait_for
from tests.slurm_cluster import SlurmCluster, missing_commands

pytestmark = [pytest.mark.slow, pytest.mark.multirank]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
# What a GPU node's #SBATCH lines ask for, scaled down to this machine: 2 tasks, no GPUs.
ON_THIS_MACHINE = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=30"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if missing := missing_commands():
        message = f"{', '.join(missing)} not found: run .ci/install-slurm.sh"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("data"))


def submit(cluster: SlurmCluster, script: str, out: Path, *arguments: str, **env: str) -> int:
    environment = {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())} | env
    return cluster.sbatch([*ON_THIS_MACHINE, f"--output={out}", script, *arguments], cwd=REPO, env=environment)


def notes(log: str, what: str) -> list[float]:
    """Unix times of the batch script's notes that contain `what`."""
    return [
        datetime.fromisoformat(line[1:24]).timestamp()
        for line in log.splitlines()
        if line.startswith("[") and what in line
    ]


@pytest.fixture(scope="module")
def finished_job(cluster, workspace):
    run_dir = workspace["root"] / "run"
    out = workspace["root"] / "pretrain.out"
    job = submit(
        cluster,
        "launcher/slurm/pretrain.sbatch",
        out,
        CONFIG=str(workspace["config"]),
        OVERRIDES=f"train.run_dir={run_dir} train.epochs=2",
    )
    state = cluster.wait_for_state(job, FINAL_STATES, timeout_s=600)
    return {"state": state, "log": out.read_text(), "run_dir": run_dir}


def test_pretrain_sbatch_runs_two_tasks_to_the_end(finished_job):
    state, log, run_dir = finished_job["state"], finished_job["log"], finished_job["run_dir"]
    assert (state["JobState"], state["ExitCode"], state["Restarts"]) == ("COMPLETED", "0:0", "0"), log[-3000:]
    assert "2 ranks on 1 node(s)" in log and "training: 2 rank(s)" in log
    assert "--resume auto: no checkpoint" in log  # the first run of a job starts fresh
    assert [r["step"] for r in records(run_dir) if "loss" in r][-1] == 2 * BATCHES_PER_EPOCH
    evals = [r for r in records(run_dir) if "eval" in r]
    assert [(r["epoch"], r["split"]) for r in evals] == [(e, s) for e in range(2) for s in ("val", "test")]
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_eval_sbatch_scores_the_trained_model_on_two_tasks(cluster, workspace, finished_job):
    out, results = workspace["root"] / "eval.out", workspace["root"] / "eval.json"
    arguments = ["--checkpoint", str(finished_job["run_dir"]), "--dataset", "cuhk-pedes", "--root"]
    job = submit(cluster, "launcher/slurm/eval.sbatch", out, *arguments, str(workspace["cuhk"]), "--out", str(results))
    state = cluster.wait_for_state(job, FINAL_STATES, timeout_s=600)
    log = out.read_text()
    assert state["JobState"] == "COMPLETED", log[-3000:]
    assert log.count("    R1      R5") == 1  # rank 0 alone reports
    metrics = json.loads(results.read_text())["metrics"]
    assert 0.0 <= metrics["R1"] <= metrics["R5"] <= metrics["R10"] <= 100.0


@pytest.mark.parametrize("stop", ["time-limit warning", "preemption"])
def test_a_stopped_job_checkpoints_requeues_and_the_requeued_job_resumes(cluster, workspace, stop):
    """The time limit's warning is SIGUSR1 to the batch script (what --signal=B:USR1@300 sends); a preemption by
    a job of a higher-priority partition sends SIGTERM to the ranks and gives them GraceTime."""
    run_dir = workspace["root"] / stop.replace(" ", "_")
    out = workspace["root"] / f"{stop.replace(' ', '_')}.out"
    epochs = 8  # long enough that the signal lands mid-run on a fast machine too
    job = submit(
        cluster,
        "launcher/slurm/pretrain.sbatch",
        out,
        CONFIG=str(workspace["config"]),
        # A data loader worker per rank: Slurm signals every process of the step, and workers must survive it.
        OVERRIDES=f"train.run_dir={run_dir} train.epochs={epochs} eval.every_epochs=0 train.log_every_steps=1 "
        "data.num_workers=1",
    )
    wait_for(lambda: len([r for r in records(run_dir) if "loss" in r]) >= 5, "five steps", timeout_s=600)
    signalled = time.time()
    if stop == "preemption":
        urgent_job = [*ON_THIS_MACHINE, "--partition=urgent", f"--output={workspace['root'] / 'urgent.out'}"]
        urgent = cluster.sbatch([*urgent_job, "--wrap", "sleep 1"], cwd=REPO)  # needs both CPUs: preempts
        signal = "SIGTERM"
    else:
        cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])
        signal = "SIGUSR1"
    state = cluster.wait_for_state(job, FINAL_STATES, timeout_s=900)
    log = out.read_text()
    assert (state["JobState"], state["Restarts"]) == ("COMPLETED", "1"), log[-4000:]
    if stop == "preemption":
        assert cluster.job(urgent)["JobState"] == "COMPLETED"

    stopped = [r for r in records(run_dir) if "stopped_after_step" in r]
    # Every rank gets the signal, but the one-step vote may count it on only the first to see it: both stop there.
    assert len(stopped) == 1 and stopped[0]["signals"] in (f"{signal} on {n} of 2 ranks" for n in (1, 2)), stopped
    step = stopped[0]["stopped_after_step"]
    assert f"stopped on {stopped[0]['signals']} after step {step}: checkpoint step{step:08d} saved" in log
    assert f"step {step}\n" in log and "resumed from epoch" in log  # "resumed from epoch E, batch B, step N"
    steps = [r["step"] for r in records(run_dir) if "loss" in r]
    assert steps == list(range(1, epochs * BATCHES_PER_EPOCH + 1))  # each step once: resumed right after the stop
    assert (run_dir / "final" / "model.safetensors").is_file()

    (clean_exit,) = notes(log, "training stopped with a checkpoint: requeueing")
    (restarted,) = notes(log, "(restart 1): 2 ranks")
    first_resumed = next(r["time"] for r in records(run_dir) if "loss" in r and r["step"] == step + 1)
    print(
        f"timing ({stop}): signal -> clean exit (checkpoint of step {step} saved, srun done) {clean_exit - signalled:.1f} s; "
        f"requeue -> requeued job starts {restarted - clean_exit:.1f} s -> first resumed step "
        f"{first_resumed - clean_exit:.1f} s (Slurm holds a requeued job cred_expire + 1 = 11 s here)"
    )
