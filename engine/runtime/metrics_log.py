"""Rank 0's metrics: one JSON object per line in RUN_DIR/metrics.jsonl, mirrored to wandb.

Every record gets a wall-clock `time` (seconds since the epoch), so that throughput over time and the
delays around a stop and a resume can be read from the file alone. wandb runs offline by default (a
local run under RUN_DIR/wandb that `wandb sync` uploads later) and online with log.wandb=online or
WANDB_MODE=online once the account is set up (`wandb login` or WANDB_API_KEY). The wandb run id is kept
in RUN_DIR/wandb_run_id, so a resumed or requeued job continues the same wandb run. A wandb that cannot
start or log (no key, no network, a wrong entity) costs one warning, never the training run, and no
message of ours repeats the API key.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

from engine.config import LogConfig

WANDB_RUN_ID_FILE = "wandb_run_id"


class MetricsLog:
    """Appends records to `path` on the rank that has `enabled`; a no-op elsewhere."""

    def __init__(
        self, path: Path, *, enabled: bool, log_config: LogConfig | None = None, run_config: dict | None = None
    ) -> None:
        self.enabled = enabled
        self.handle = path.open("a") if enabled else None
        self.wandb_run = None
        if enabled and log_config is not None:
            self.wandb_run = start_wandb(path.parent, log_config, run_config or {})
        self.wandb_started = self.wandb_run is not None  # its service needs stopping even after a failure

    def write(self, record: dict) -> None:
        if not self.handle:
            return
        record = {**record, "time": round(time.time(), 3)}
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        if self.wandb_run is not None:
            try:
                self.wandb_run.log(wandb_fields(record))
            except Exception as error:  # a broken wandb must not stop training: warn once, then stop using it
                warn_wandb(f"wandb stopped logging ({describe(error)}); metrics still go to {self.handle.name}")
                self.wandb_run = None

    def close(self) -> None:
        if self.handle:
            self.handle.close()
            self.handle = None
        if self.wandb_started:
            self.wandb_started = False
            import wandb

            if self.wandb_run is not None:
                self.wandb_run = None
                try:
                    wandb.finish()
                except Exception as error:
                    warn_wandb(f"wandb could not finish its run ({describe(error)}); metrics.jsonl is complete")
            # Stop wandb's service now: its exit hook would print a traceback if the service died first (launchers
            # and Slurm signal every process of a job); teardown removes that hook, and exits when the service failed.
            with contextlib.suppress(Exception, SystemExit):
                wandb.teardown()


def start_wandb(run_dir: Path, log_config: LogConfig, run_config: dict):
    """The wandb run, or None when it is disabled or cannot start (after one warning)."""
    mode = os.environ.get("WANDB_MODE") or log_config.wandb  # wandb's own variable wins, as in every wandb tool
    if mode == "disabled":
        return None
    try:
        import wandb

        id_file = run_dir / WANDB_RUN_ID_FILE
        if not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex[:12])  # wandb run ids: letters and digits
        return wandb.init(
            project=log_config.wandb_project,
            entity=log_config.wandb_entity,
            name=run_dir.name,
            id=id_file.read_text().strip(),
            resume="allow",
            dir=str(run_dir),
            config=run_config,
            mode=mode,
            # console="off": wandb leaves stdout/stderr alone (progress bar, JSON lines); quiet: no summary table.
            settings=wandb.Settings(console="off", quiet=True, init_timeout=60),
        )
    except ImportError:  # an image without it: wandb is an extra (pyproject.toml)
        warn_wandb(
            f"wandb is off for this run: log.wandb is {mode} but wandb is not installed (pip install 'wandb>=0.31,<0.32', "
            f"or a wheelhouse made with --with wandb; log.wandb=disabled silences this); "
            f"metrics still go to {run_dir / 'metrics.jsonl'}"
        )
        return None
    except Exception as error:  # wandb.Error, OSError, a missing key: training goes on without it
        warn_wandb(f"wandb is off for this run ({describe(error)}); metrics still go to {run_dir / 'metrics.jsonl'}")
        return None


def wandb_fields(record: dict) -> dict:
    """The numbers of a record, flat: an eval record's metrics under eval/<benchmark>/<split>/, dicts as a/b."""
    prefix = f"eval/{record['eval']}/{record['split']}/" if "eval" in record else ""
    fields = {}
    for key, value in record.items():
        if isinstance(value, dict):
            fields |= {f"{key}/{k}": v for k, v in value.items() if _is_number(v)}
        elif _is_number(value) and key != "time":
            fields[f"{prefix}{key}" if prefix and key != "epoch" else key] = value
    return fields


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe(error: BaseException) -> str:
    """First line of an error, with the API key (if the environment holds one) masked."""
    text = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
    key = os.environ.get("WANDB_API_KEY", "")
    return text.replace(key, "<WANDB_API_KEY>") if len(key) >= 8 else text


def warn_wandb(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
