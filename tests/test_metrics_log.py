"""RUN_DIR/metrics.jsonl and its wandb mirror: offline by default, one wandb run across restarts, and a bad
wandb setup costs one warning that never repeats the API key, while the JSON lines go on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.config import LogConfig
from engine.runtime.metrics_log import WANDB_RUN_ID_FILE, MetricsLog, wandb_fields
from tests.helpers import REPO


@pytest.fixture(autouse=True)
def no_wandb_account(monkeypatch, tmp_path):
    """No key, no settings and no mode from this machine's account or environment."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_ENTITY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))


def lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rank_zero_appends_json_lines_with_wall_time_and_other_ranks_write_nothing(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True)
    log.write({"epoch": 0, "step": 1, "loss": 2.5})
    log.close()
    again = MetricsLog(tmp_path / "metrics.jsonl", enabled=True)  # a resumed run appends
    again.write({"epoch": 0, "step": 2, "loss": 2.0})
    again.close()
    records = lines(tmp_path)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 2.5), (2, 2.0)]
    assert all(isinstance(r["time"], float) and r["time"] > 1.6e9 for r in records)

    other = tmp_path / "other"
    other.mkdir()
    silent = MetricsLog(other / "metrics.jsonl", enabled=False, log_config=LogConfig())
    silent.write({"step": 1})
    silent.close()
    assert list(other.iterdir()) == []  # nor a wandb run


@pytest.mark.slow
def test_wandb_is_offline_by_default_and_a_resumed_run_continues_the_same_wandb_run(tmp_path, capfd):
    for step in (1, 2):
        log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True, log_config=LogConfig(), run_config={"lr": 1e-3})
        assert log.wandb_run is not None and log.wandb_run.settings.mode == "offline"
        log.write({"epoch": 0, "step": step, "loss": 1.0 / step})
        log.close()
    run_id = (tmp_path / WANDB_RUN_ID_FILE).read_text()
    offline_runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(f"-{run_id}" in name for name in offline_runs)  # "-1": the same second
    assert all(list((tmp_path / "wandb" / name).glob(f"run-{run_id}.wandb")) for name in offline_runs)
    assert "warning" not in capfd.readouterr().err
    assert [r["step"] for r in lines(tmp_path)] == [1, 2]


def test_wandb_mode_in_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True, log_config=LogConfig(wandb="offline"))
    assert log.wandb_run is None
    log.write({"step": 1})
    log.close()
    assert not (tmp_path / "wandb").exists() and len(lines(tmp_path)) == 1


@pytest.mark.parametrize("api_key", [None, "my-secret-key-1234"], ids=["online without a key", "a malformed key"])
def test_a_bad_online_setup_is_one_warning_never_the_key_and_training_logs_on(tmp_path, monkeypatch, capfd, api_key):
    if api_key:
        monkeypatch.setenv("WANDB_API_KEY", api_key)
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True, log_config=LogConfig(wandb="online"))
    log.write({"epoch": 0, "step": 1, "loss": 3.0})
    log.close()
    out, err = capfd.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "wandb is off for this run" in warnings[0], err
    assert "Traceback" not in err
    if api_key:
        assert "secret" not in out + err
    assert [r["loss"] for r in lines(tmp_path)] == [3.0]


def test_wandb_gets_the_numbers_flat_with_eval_metrics_under_their_benchmark():
    train = {"epoch": 1, "step": 30, "loss": 2.0, "lr": 1e-4, "time": 1.7e9, "data_problems": {"corrupt": 0}}
    assert wandb_fields(train) == {"epoch": 1, "step": 30, "loss": 2.0, "lr": 1e-4, "data_problems/corrupt": 0}
    evaluation = {"epoch": 1, "tag": "epoch0002", "eval": "CUHK-PEDES", "split": "val", "R1": 50.0, "new_best": True}
    assert wandb_fields(evaluation) == {"epoch": 1, "eval/CUHK-PEDES/val/R1": 50.0}


SERVICE_DIES = """
import signal, sys, psutil
from pathlib import Path
from engine.config import LogConfig
from engine.runtime.metrics_log import MetricsLog
log = MetricsLog(Path(sys.argv[1]) / "metrics.jsonl", enabled=True, log_config=LogConfig())
log.write({"step": 1, "loss": 2.0})
(service,) = [p for p in psutil.Process().children(recursive=True) if p.name() == "wandb-core"]
service.send_signal(signal.SIGTERM)  # as Slurm or a launcher signals every process of a job
service.wait(timeout=30)
log.write({"step": 2, "loss": 1.0})
log.close()
"""


@pytest.mark.slow
def test_a_wandb_service_killed_by_the_job_signal_costs_one_warning_and_no_traceback_at_exit(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SERVICE_DIES, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("warning: wandb")]) == 1, result.stderr
    assert [r["step"] for r in lines(tmp_path)] == [1, 2]


def test_without_wandb_installed_training_logs_on_and_says_what_to_install(tmp_path, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError, as on an image without it
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True, log_config=LogConfig(), run_config={})
    assert log.wandb_run is None
    log.write({"epoch": 0, "step": 1, "loss": 1.0})
    log.close()
    assert [r["step"] for r in lines(tmp_path)] == [1]
    warning = capfd.readouterr().err.strip()
    assert warning.count("\n") == 0 and "log.wandb is offline but wandb is not installed" in warning
    assert "pip install 'wandb>=0.31,<0.32'" in warning
