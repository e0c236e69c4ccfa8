"""Two nodes simulated on this machine: launcher/train.sh started twice with a two-host hostfile, node ranks
0 and 1 and the rendezvous on loopback (the deepspeed launcher's --no_ssh mode, as on nodes without ssh).
Together they form one 2-rank job that trains, checkpoints, and resumes when the same commands run again;
python -m eval.plot then draws its curves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cluster_runs import BATCHES_PER_EPOCH, REPO, free_port, records, start_train_sh, tiny_workspace

pytestmark = [pytest.mark.slow, pytest.mark.multirank]


def start_two_nodes(workspace, run_dir, log_prefix: str, *extra: str) -> list:
    hostfile = workspace["root"] / "hostfile"
    hostfile.write_text("# two simulated nodes, one rank each\nnode-a slots=1\nnode-b slots=1\n")
    port = str(free_port())
    overrides = f"train.run_dir={run_dir} eval.every_epochs=0 train.log_every_steps=1 {' '.join(extra)}"
    return [
        start_train_sh(
            workspace["root"] / f"{log_prefix}_node{node}.log",
            CONFIG=str(workspace["config"]),
            OVERRIDES=overrides,
            HOSTFILE=str(hostfile),
            NODE_RANK=str(node),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        for node in (0, 1)
    ]


def finish(processes, workspace, log_prefix: str) -> list[str]:
    logs = []
    for node, process in enumerate(processes):
        process.wait(timeout=600)
        logs.append((workspace["root"] / f"{log_prefix}_node{node}.log").read_text())
    for node, process in enumerate(processes):
        assert process.returncode == 0, f"node {node} exited with {process.returncode}:\n{logs[node][-3000:]}"
    return logs


def test_two_simulated_nodes_train_checkpoint_and_resume(tmp_path):
    workspace = tiny_workspace(tmp_path)
    run_dir = tmp_path / "run"
    stop_at = BATCHES_PER_EPOCH + 2  # past the first epoch's checkpoint, stopped mid-epoch 1

    node0, node1 = finish(
        start_two_nodes(workspace, run_dir, "first", f"train.max_steps={stop_at}"), workspace, "first"
    )
    assert "training: 2 rank(s)" in node0  # one job of two ranks, not two jobs of one
    assert "'node-a': [0]" in node0 and "'node-b': [1]" in node1  # the launchers' global rank mapping
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step{stop_at:08d}"
    assert (run_dir / "checkpoints" / "epoch0001" / "rank00001_state.safetensors").is_file()  # node 1 wrote its part
    assert [r["step"] for r in records(run_dir) if "loss" in r][-1] == stop_at

    node0, _ = finish(start_two_nodes(workspace, run_dir, "again"), workspace, "again")  # the same commands again
    assert f"resumed from epoch 1, batch 2, step {stop_at}" in node0
    assert [r["step"] for r in records(run_dir) if "loss" in r][-1] == 3 * BATCHES_PER_EPOCH
    assert (run_dir / "final" / "model.safetensors").is_file()

    plotted = subprocess.run(
        [sys.executable, "-m", "eval.plot", str(run_dir)], cwd=REPO, capture_output=True, text=True
    )
    assert plotted.returncode == 0 and (run_dir / "curves.png").stat().st_size > 10_000, plotted.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONFIG": "/nowhere/x.yaml"}, "error: CONFIG=/nowhere/x.yaml: no such config file"),
        (
            {"HOSTFILE": "/nowhere/hostfile"},
            "error: HOSTFILE=/nowhere/hostfile: no such file (format: hostfile.example)",
        ),
        ({"HOSTFILE": "hostfile.example", "NODE_RANK": "1"}, "error: NODE_RANK is set, so MASTER_ADDR must name"),
        ({"NODE_RANK": "1"}, "error: NODE_RANK=1 needs HOSTFILE (which node is which)"),
        ({"GPUS_PER_NODE": "two"}, "error: GPUS_PER_NODE must be a positive number (got 'two')"),
    ],
)
def test_train_sh_stops_bad_settings_with_one_line(env, message):
    environment = {k: v for k, v in os.environ.items() if k not in ("HOSTFILE", "NODE_RANK", "MASTER_ADDR")}
    environment |= {"CONFIG": "configs/demo_cpu.yaml", "PYTHON": sys.executable} | env
    result = subprocess.run(["bash", "launcher/train.sh"], cwd=REPO, env=environment, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1
