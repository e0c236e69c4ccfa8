"""python -m eval.plot RUN_DIR: loss, learning rate, throughput and eval curves of a run in one PNG."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eval.plot import eval_curves, read_metrics, training_curves
from tests.helpers import REPO


def write_run(run_dir) -> None:
    """A run stopped after step 3 and resumed from its step-2 checkpoint (step 3 trained twice), evaluated
    after each epoch, whose last line was cut by a kill."""
    run_dir.mkdir()
    records = [{"epoch": 0, "step": s, "loss": 5.0 - s, "lr": 1e-3 * s, "samples_per_s": 100.0} for s in (1, 2, 3)]
    records += [{"epoch": 0, "noise_exchange_s": 0.1}]
    records += [{"epoch": 0, "step": 3, "loss": 1.5, "lr": 3e-3, "samples_per_s": 90.0}]
    records += [
        {"epoch": 0, "tag": "epoch0001", "eval": "CUHK-PEDES", "split": s, "R1": 10.0, "mAP": 8.0} for s in "vt"
    ]
    records += [{"epoch": 1, "step": 4, "loss": 1.0, "lr": 1e-3, "samples_per_s": 95.0}]
    records += [{"epoch": 1, "tag": "epoch0002", "eval": "CUHK-PEDES", "split": "v", "R1": 20.0, "mAP": 15.0}]
    text = "\n".join(json.dumps(r) for r in records) + '\n{"epoch": 1, "st'
    (run_dir / "metrics.jsonl").write_text(text)


def plot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eval.plot", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_plot_writes_one_png_with_the_later_record_of_a_retrained_step(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir)
    curves = training_curves(read_metrics(run_dir))
    assert curves["loss"] == [(1, 4.0), (2, 3.0), (3, 1.5), (4, 1.0)]
    assert eval_curves(read_metrics(run_dir))["CUHK-PEDES v R1"] == [(1, 10.0), (2, 20.0)]

    result = plot(str(run_dir))
    assert result.returncode == 0, result.stderr
    png = run_dir / "curves.png"
    assert result.stdout.strip() == f"wrote {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    result = plot(str(run_dir), "--out", str(tmp_path / "elsewhere" / "c.png"))  # a folder that does not exist
    assert result.returncode == 2 and "its folder" in result.stderr and not (tmp_path / "elsewhere").exists()
    (tmp_path / "elsewhere").mkdir()
    result = plot(str(run_dir), "--out", str(tmp_path / "elsewhere" / "c.png"))
    assert result.returncode == 0 and (tmp_path / "elsewhere" / "c.png").is_file()


def test_a_folder_without_metrics_is_one_line_naming_it(tmp_path):
    result = plot(str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no metrics.jsonl in {tmp_path / 'nowhere'} (expected a run folder written by python -m launcher.train)"
    ]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    result = plot(str(tmp_path / "bad"))
    assert (
        result.returncode == 2
        and result.stderr.strip() == f"error: {tmp_path / 'bad' / 'metrics.jsonl'}:2 is not a JSON object"
    )
