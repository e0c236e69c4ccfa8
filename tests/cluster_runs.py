"""Helpers of the cluster tests (test_multinode, test_faults, test_slurm): the tiny training set of the
end-to-end tests, launcher/train.sh started as a process, and waiting on a run's metrics.jsonl."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from data.pack import pack
from data.synthetic import generate
from tests.helpers import BATCHES_PER_EPOCH, REPO, SOURCES, TINY, free_port

__all__ = ["BATCHES_PER_EPOCH", "REPO", "free_port", "records", "start_train_sh", "tiny_workspace", "wait_for"]


def build_deepspeed_comm_extension() -> None:
    """The first DeepSpeed run on a machine compiles a small C++ communication extension (about a minute), and
    a source path that changed makes it compile again. Built here, once, and not inside a timed job whose ranks
    would all wait on it (one such build, under srun, outlasted a 10-minute deadline)."""
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


def tiny_workspace(root: Path) -> dict[str, Path]:
    """48 synthetic pedestrians packed into 4 shards (12 batches of 8 per rank and epoch on 2 ranks), a held-out
    CUHK-PEDES-layout set, and the end-to-end tests' tiny config; the DeepSpeed extension is built first."""
    build_deepspeed_comm_extension()
    generate(root / "synthetic", seed=0, train_images=48, test_identities=8, images_per_test_identity=2, progress=False)
    raw = root / "synthetic" / "luperson_mllm"
    pack(raw / "imgs", [raw / f"{s}.json" for s in SOURCES], root / "shards", images_per_shard=12)
    config = root / "tiny.yaml"
    cuhk = root / "synthetic" / "cuhk_pedes"
    config.write_text(TINY.replace("SHARDS", str(root / "shards")).replace("CUHK", str(cuhk)))
    return {"root": root, "config": config, "cuhk": cuhk}


def start_train_sh(log: Path, **env: str) -> subprocess.Popen:
    """launcher/train.sh with these environment variables (CONFIG, OVERRIDES, HOSTFILE, ...), output to `log`.
    One thread per rank: the ranks share this machine's few cores."""
    environment = os.environ | {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"} | env
    with log.open("w") as out:
        return subprocess.Popen(
            ["bash", "launcher/train.sh"], cwd=REPO, env=environment, stdout=out, stderr=subprocess.STDOUT
        )


def records(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl (complete lines only: the run may be writing)."""
    path = run_dir / "metrics.jsonl"
    parsed = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):  # the last line, half written
            parsed.append(json.loads(line))
    return parsed


def wait_for(condition, what: str, *, timeout_s: float, poll_s: float = 0.2, processes=()):
    """Polls `condition()` until it returns something truthy; fails if it takes longer or a process exits first."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"{process.args} exited with {process.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)
    return result
