"""The ablation harness end to end in its reduced form (tiny world and model, one seed, one epoch, two rows):
world -> shards -> stand-in CLIP in OpenAI's layout -> layer sweep -> training runs -> ablation.md/png. A second
call finds every stage done and trains nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def ablation(out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "launcher.ablation", "--out", str(out), "--reduced", "--jobs", "2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_reduced_ablation(tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    ablation(out)
    report = (out / "ablation.md").read_text()
    assert "| stand-in CLIP, no training |" in report and "| static + dynamic, NAM |" in report
    assert (out / "ablation.png").stat().st_size > 1000
    assert (out / "stand_in" / "clip.pt").is_file()  # the OpenAI-layout file every run loads as model.pretrained
    data = json.loads((out / "ablation.json").read_text())
    assert set(data["sweep"]["per_layer"]) == {"1", "2"} and data["sweep"]["best_layer"] in (1, 2)
    nam = data["results"]["tde_nam"][0]
    for target in ("cuhk-pedes", "icfg-pedes", "rstpreid"):
        assert 0.0 <= nam["targets"][target]["R1"] <= 100.0
    assert set(nam["noise_auroc_per_epoch"]) == {"0", "1"}
    train_log = out / "runs" / "tde_nam" / "seed0" / "train.log"
    config = (out / "runs" / "tde_nam" / "seed0" / "run" / "config.yaml").read_text()
    assert f"pretrained: {out / 'stand_in' / 'clip.pt'}" in config
    run_dir = out / "runs" / "tde_nam" / "seed0" / "run"
    assert (run_dir / "final" / "model.safetensors").is_file() and not (run_dir / "checkpoints").exists()

    stamp = train_log.stat().st_mtime_ns
    again = ablation(out)
    assert train_log.stat().st_mtime_ns == stamp  # nothing retrained
    assert (out / "ablation.md").read_text().split("## R1")[1] == report.split("## R1")[1]
    assert "wrote" in again.stdout
