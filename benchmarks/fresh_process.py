"""Memory benchmarks run each case in a fresh process, so that one case's peak RSS does not hide another's."""

from __future__ import annotations

import multiprocessing
import resource


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_in_fresh_process(target, *args):
    """Calls target(*args, results) in a spawned process; returns what it put on `results`."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=target, args=(*args, results))
    process.start()
    outcome = results.get()
    process.join()
    return outcome
