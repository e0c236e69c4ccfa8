"""One seed, one result: the same tiny training run twice, in fresh processes with different hash seeds and
different OMP_NUM_THREADS, ends with bitwise equal parameters when train.cpu_threads pins the thread count.
Without the pin, 1 and 2 threads give different parameters (reductions split differently over threads), which is
the run-to-run variation docs/ablation.md measures."""

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
from tests.helpers import REPO, SOURCES

pytestmark = pytest.mark.slow
TINY = """
model: {image_size: [64, 32], vision_width: 64, vision_layers: 2, vision_heads: 2, text_width: 64, text_layers: 2,
        text_heads: 2, embed_dim: 32, context_length: 40}
nam: {tap_layer: 1}
data: {shards: SHARDS, num_workers: 1, shuffle_buffer: 64, augment: {crop_padding: 2}}
optim: {lr: 1.0e-3}
train: {epochs: 2, batch_size: 8, log_every_steps: 8, cpu_threads: 1}
eval: {every_epochs: 0}
log: {wandb: disabled}
"""


def train(config: Path, run_dir: Path, *, threads: int, hash_seed: int) -> dict[str, torch.Tensor]:
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONHASHSEED": str(hash_seed), "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "launcher.train", "--config", str(config), f"train.run_dir={run_dir}"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_same_seed_same_parameters_across_processes_and_thread_counts(tmp_path: Path) -> None:
    generate(tmp_path / "syn", seed=0, train_images=32, test_identities=2, images_per_test_identity=1, progress=False)
    raw = tmp_path / "syn" / "luperson_mllm"
    pack(raw / "imgs", [raw / f"{s}.json" for s in SOURCES], tmp_path / "shards", images_per_shard=8)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("SHARDS", str(tmp_path / "shards")))
    first = train(config, tmp_path / "a", threads=1, hash_seed=1)
    second = train(config, tmp_path / "b", threads=2, hash_seed=2)
    assert first.keys() == second.keys()
    differing = [key for key in first if not torch.equal(first[key], second[key])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    # each run records what its numbers depend on: the same machine and libraries, the pinned thread count
    environments = [json.loads((tmp_path / run / "environment.json").read_text()) for run in ("a", "b")]
    assert environments[0] == environments[1]
    assert environments[0]["torch_threads"] == 1 and environments[0]["torch"] == torch.__version__
