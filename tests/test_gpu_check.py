"""benchmarks/gpu_check.sh on a machine without CUDA: it says so and exits 0 having written nothing; and the
summary it ends with, built from real CPU outputs of the step benchmark and the reference step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check_report import check_versions, declared_ranges, render, summary, versions
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


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=REPO,
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_missing_interpreter_is_one_line(tmp_path: Path):
    for result in (
        check(env={"PYTHON": str(tmp_path / "nothing" / "python")}),
        check("--python", str(tmp_path / "nothing" / "python")),
    ):
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().endswith("name the interpreter with --python (or PYTHON)"), result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--wheelhouse", "EMPTY", "OUT"], "holds no .whl files"),
        (["--site", "NOWHERE", "OUT"], "is not a folder"),
        (["--wheelhouse"], "--wheelhouse needs a folder"),
        (["--fast", "OUT"], "unknown option --fast"),
    ],
)
def test_bad_options_are_one_line_before_anything_is_written(tmp_path: Path, args: list[str], message: str):
    (tmp_path / "empty").mkdir()
    places = {"EMPTY": tmp_path / "empty", "NOWHERE": tmp_path / "nowhere", "OUT": tmp_path / "out"}
    result = check("--python", sys.executable, *[str(places.get(a, a)) for a in args])
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_the_interpreter_and_wheelhouse_options_without_cuda_write_nothing(tmp_path: Path):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "example-1.0-py3-none-any.whl").write_bytes(b"")
    site = tmp_path / "site"
    result = check(
        "--python", sys.executable, "--wheelhouse", str(wheelhouse), "--site", str(site), str(tmp_path / "o")
    )
    assert result.returncode == 0, result.stderr
    assert f"no CUDA device here (torch.cuda.is_available() is False with {sys.executable})" in result.stdout
    assert not site.exists() and not (tmp_path / "o").exists()


def test_the_version_check_reads_the_declared_ranges(tmp_path: Path):
    """Every declared dependency gets a row; a runtime one that is missing fails the check, an optional one not."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nrequires-python = ">=3.11"\ndependencies = ["torch>=2.11", "no-such-package>=1"]\n'
        '[project.optional-dependencies]\nwandb = ["another-missing-one>=1"]\ndev = ["pytest"]\n'
    )
    ranges = declared_ranges(pyproject)
    assert ranges == {
        "python": (">=3.11", None),
        "torch": (">=2.11", None),
        "no-such-package": (">=1", None),
        "another-missing-one": (">=1", "wandb"),
    }
    rows, complete = check_versions(ranges)
    verdicts = {name: verdict for name, _, _, verdict in rows}
    assert verdicts["torch"] == "ok" and verdicts["no-such-package"] == "MISSING" and not complete
    assert verdicts["another-missing-one"] == "not installed (only for the 'wandb' extra)"
    rows, complete = check_versions({"torch": ("<2", None)})
    assert rows[0][3] == "outside the tested range" and complete  # reported, not refused


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
    assert again.returncode == 2 and "already exists; choose another name" in again.stderr  # never overwritten

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
