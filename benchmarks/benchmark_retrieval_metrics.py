"""Memory and time of the retrieval metrics at the benchmarks' scales, each case in a fresh process.

    python -m benchmarks.benchmark_retrieval_metrics [--budget-mb 256] [--million-queries 256]

Cases: CUHK-PEDES test size (6,156 x 3,074) ranked as one full matrix (the usual implementation, the
baseline) and chunked from the features; ICFG-PEDES test size (19,848 x 19,848) chunked (the full matrix
would need about 24 GB to rank); and a gallery of 1 M random features. Peak RSS is measured above what the
process held once its features existed, so it is the metric's own memory."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.fresh_process import peak_rss_mb, run_in_fresh_process
from data.cli_errors import error_boundary
from eval.metrics import BYTES_PER_RANKED_ENTRY, retrieval_metrics, retrieval_metrics_from_features

DIM = 512


def _case(queries: int, gallery: int, identities: int, full_matrix: bool, budget: int, results) -> None:
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    query_feats = torch.randn(queries, DIM, generator=generator)
    gallery_feats = torch.randn(gallery, DIM, generator=generator)
    query_pids = torch.randint(0, identities, (queries,), generator=generator)
    gallery_pids = torch.randint(0, identities, (gallery,), generator=generator)
    before = peak_rss_mb()
    started = time.perf_counter()
    if full_matrix:
        similarity = (
            torch.nn.functional.normalize(query_feats, dim=1) @ torch.nn.functional.normalize(gallery_feats, dim=1).T
        )
        metrics = retrieval_metrics(similarity, query_pids, gallery_pids, chunk_size=queries)
    else:
        metrics = retrieval_metrics_from_features(
            query_feats, gallery_feats, query_pids, gallery_pids, memory_budget=budget
        )
    results.put((time.perf_counter() - started, peak_rss_mb() - before, metrics["R1"]))


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-mb", type=int, default=256, help="memory budget of the chunked ranking")
    parser.add_argument("--million-queries", type=int, default=256, help="queries against the 1 M gallery")
    args = parser.parse_args(argv)
    budget = args.budget_mb << 20
    cases = [
        ("CUHK-PEDES size, full matrix", 6156, 3074, 1000, True),
        ("CUHK-PEDES size, chunked", 6156, 3074, 1000, False),
        ("ICFG-PEDES size, chunked", 19848, 19848, 1000, False),
        ("1 M gallery, chunked", args.million_queries, 1_000_000, 100_000, False),
    ]
    print(f"{'case':<30} {'queries':>8} {'gallery':>9} {'seconds':>8} {'peak MB':>8}  (beyond the features)")
    measured = {}
    for name, queries, gallery, identities, full in cases:
        seconds, peak_mb, _ = run_in_fresh_process(_case, queries, gallery, identities, full, budget)
        measured[name] = (seconds, peak_mb)
        print(f"{name:<30} {queries:>8} {gallery:>9} {seconds:>8.2f} {peak_mb:>8.0f}", flush=True)
    full_s, full_mb = measured["CUHK-PEDES size, full matrix"]
    chunk_s, chunk_mb = measured["CUHK-PEDES size, chunked"]
    print(f"CUHK size, chunked / full: time {chunk_s / full_s:.2f}x, peak memory {chunk_mb / full_mb:.2f}x")
    print(
        f"ICFG size as one full matrix would take about {19848 * 19848 * BYTES_PER_RANKED_ENTRY / 2**30:.0f} GB to rank"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
