"""Stopping cleanly on a signal, so that a preempted or time-limited job loses no finished step.

SIGUSR1 (Slurm's early warning: `#SBATCH --signal=B:USR1@300`, forwarded to the ranks by the batch script)
and SIGTERM (preemption, the time limit, `scancel`, the deepspeed launcher stopping its ranks) only set a
flag. At every agreement (every train.agree_every_steps optimizer steps, engine/runtime/step_agreement.py) the ranks add
up their flags, so that all of them stop after the same step even when the signal reached them at different
moments; they save a checkpoint there and raise `StoppedBySignal`, and the entry point exits with EXIT_RESUMABLE. The batch script requeues the
job on that status, and the requeued job's `--resume auto` picks the checkpoint up.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import signal
from pathlib import Path

from engine.runtime import collectives

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
EXIT_RESUMABLE = 75  # sysexits' EX_TEMPFAIL: stopped on a signal after saving a checkpoint; run the same command again


class StoppedBySignal(Exception):
    """Raised on every rank once the checkpoint of the step they agreed to stop at is complete."""

    def __init__(self, signals: str, step: int, tag: str) -> None:
        super().__init__(f"stopped on {signals} after step {step}: checkpoint {tag} saved")
        self.signals, self.step, self.tag = signals, step, tag


class StoppedOnDataOutage(Exception):
    """Raised on every rank once the checkpoint of the step they stopped at is complete, because a rank's remote
    shards could not be fetched (the store stayed down past data.fetch_attempts). The message is one line; on the
    rank that could not fetch, it names the endpoint and the shard."""

    def __init__(self, reason: str, step: int, tag: str, *, here: bool) -> None:
        super().__init__(
            f"{reason}; stopped after step {step} with checkpoint {tag} saved: once the store answers, the same "
            "command with --resume auto continues from it"
        )
        self.step, self.tag, self.here = step, tag, here


_received: list[str] = []  # names of the stop signals this process got


def _on_stop_signal(signum: int, frame) -> None:
    # Only record: the step in progress finishes and the ranks agree on where to stop (engine/runtime/step_agreement.py).
    _received.append(signal.Signals(signum).name)


def install_stop_handlers() -> None:
    """Catches SIGUSR1 and SIGTERM from now on (data loader workers ignore them: shield_data_workers)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop_signal)


def shield_data_workers(loader):
    """Makes `loader`'s worker processes ignore the stop signals, which Slurm and the launchers send to every
    process of a job: torch's own SIGTERM handler would kill a worker, and the rank with it, before the step
    ends. The rank stops its workers itself when it stops. Returns the loader."""
    loader.worker_init_fn = functools.partial(_ignore_stop_signals, loader.worker_init_fn)
    return loader


def _ignore_stop_signals(chained, worker_id: int) -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if chained is not None:
        chained(worker_id)


def end_data_workers() -> None:
    """Ends the data loader workers still alive as the process exits. They ignore SIGTERM, and multiprocessing's
    exit handler stops children with SIGTERM and then waits for them: a stop or a failure mid-epoch would hang."""
    gc.collect()  # an unfinished loader freed here stops its workers the normal way
    leftovers = multiprocessing.active_children()
    if leftovers:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would raise for each worker ended here
        for worker in leftovers:
            worker.kill()
            worker.join(timeout=10)


def local_votes() -> list[int]:
    """This rank's vote: 1 per stop signal (STOP_SIGNALS order) it got, else 0."""
    names = set(_received)
    return [int(s.name in names) for s in STOP_SIGNALS]


def describe_votes(votes: list[float]) -> str | None:
    """Votes summed over the ranks -> the stop signal most ranks got ("SIGUSR1 on 1 of 2 ranks"), or None to go on."""
    if not any(votes):
        return None
    first = max(range(len(STOP_SIGNALS)), key=lambda i: votes[i])
    return f"{STOP_SIGNALS[first].name} on {int(votes[first])} of {collectives.world_size()} ranks"


def resume_target(resume: str | None, run_dir: Path, *, announce: bool) -> str | None:
    """`--resume auto` is `latest` when the run has a checkpoint and a fresh start otherwise, so that a
    requeued or rerun job continues with no change to its command; other values pass through."""
    if resume != "auto":
        return resume
    if (run_dir / "checkpoints" / "latest").is_file():
        return "latest"
    if announce:
        print(f"--resume auto: no checkpoint in {run_dir / 'checkpoints'} yet, starting fresh", flush=True)
    return None
