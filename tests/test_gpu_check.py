"""benchmarks/gpu_check.sh on a machine without CUDA: it says so and exits 0 having written nothing; and the
summary it ends with, built from real CPU outputs of the step benchmark and the reference step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check_report import render, summary, versions
from benchmarks.reference_step import time_reference_steps
from tests.helpers import REPO, TINY_REFERENCE

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_says_so_and_writes_nothing(tmp_path: Path):
    out = tmp_path / "check"
    result = subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        cwd=REPO,
        env=os.environ | {"PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "gpu_check: no CUDA device here" in result.stdout
    assert not out.exists()


@pytest.mark.slow
def test_a_missing_interpreter_is_one_line(tmp_path: Path):
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=REPO,
        env=os.environ | {"PYTHON": str(tmp_path / "nothing" / "python")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stderr.strip().endswith("run make venv first (or set PYTHON)")


TINY_CONFIG = """
model: {image_size: [32, 32], vision_width: 64, vision_layers: 2, vision_heads: 2, text_width: 64, text_layers: 2,
        text_heads: 2, embed_dim: 32, context_length: 24}
nam: {tap_layer: 1}
train: {batch_size: 3}
"""


@pytest.mark.slow
def test_the_step_benchmark_cli_and_the_summary_with_the_ratio_against_the_reference(tmp_path: Path):
    """The step benchmark's command (1 process, tiny model) and the reference step, both run for real on the CPU,
    then the summary that gpu_check.sh ends with."""
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    command = [sys.executable, "-m", "benchmarks.benchmark_train_step", "--config", str(tmp_path / "tiny.yaml")]
    command += ["--steps", "1", "--peak-tflops", "1", "--out", str(tmp_path / "step_benchmark.json")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NAM / EM step time" in result.stdout and "(peak 1.0 TFLOP/s, fp32 assumed)" in result.stdout
    step = json.loads((tmp_path / "step_benchmark.json").read_text())
    assert step["modes"]["nam"]["flops_per_sample"] > step["modes"]["em"]["flops_per_sample"] > 0
    assert step["modes"]["nam"]["parts_ms"]["nam_scoring"] > 0 and step["modes"]["em"]["parts_ms"]["nam_scoring"] == 0
    assert step["peak_memory_kind"] == "rss" and step["peak_memory_bytes_per_rank"][0] > 0
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "exists; give a new path" in again.stderr  # never overwritten

    reference = time_reference_steps(TINY_REFERENCE, batch=3, steps=1, device=torch.device("cpu"))
    (tmp_path / "reference_step.json").write_text(json.dumps(reference))
    (tmp_path / "parts.jsonl").write_text('{"part": "step_benchmark", "rc": 0, "seconds": 3}\n')
    summarised = summary(tmp_path, seconds=3)
    ratio = step["modes"]["nam"]["samples_per_s"] / reference["samples_per_s"]
    assert summarised["nam_step_over_reference_samples_per_s"] == pytest.approx(ratio)
    table = (tmp_path / "gpu_check.txt").read_text()
    assert table == render(json.loads((tmp_path / "gpu_check.json").read_text())) + "\n"
    assert "ours / reference" in table and "step_benchmark" in table and "MFU" in table
    assert versions()["torch"] in (torch.__version__, torch.__version__.split("+")[0])


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="tests/test_cuda.py runs it checked")
def test_the_sync_probe_runs_its_steps_on_the_cpu():
    """tests/cuda_sync_probe.py, which test_cuda.py runs under set_sync_debug_mode("error"), runs unchecked here."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.cuda_sync_probe"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no CUDA: 3 steps not checked for syncs, captions scored: 48" in result.stdout
