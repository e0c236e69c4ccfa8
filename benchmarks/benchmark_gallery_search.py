"""Query latency, memory and recall of person search (eval.search.gallery_search) on synthetic gallery vectors.

    python -m benchmarks.benchmark_gallery_search [--sizes 100000 1000000] [--queries 100] [--probes 16]

For each gallery size: unit-norm fp16 vectors of dimension 512 (CLIP ViT-B/16's), drawn as identities of 10
images around a random centre (image = centre + 0.75 noise; query = centre + 1.0 noise, per dimension), so that
a query's own identity stands out as it does for a trained model; `--uniform` draws structureless vectors
instead, the worst case for an inverted file. Then, each in a fresh process:

- exact: the features in memory, as `serve` holds them, ranked by `exact_top_k` one query at a time under
  `--budget-mb` (the baseline);
- approximate: the FAISS inverted file that `index --approximate` builds (`build_approximate`, IVF over
  sqrt(N) lists, fp16 vectors), `--probes` lists scanned per query.

Latency is the median over single queries (exact: the first `--timed-queries`); memory is the RSS above what the
process held before it loaded its gallery structure: "held" once loaded and after the queries, "peak" the
highest (loading FAISS's serialized bytes briefly holds the index twice); recall@10 is the fraction of exact
search's top 10 that the approximate search returns, over all queries. Both searches use 2 threads."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import psutil
import torch

from benchmarks.fresh_process import peak_rss_mb, run_in_fresh_process
from data.cli_errors import error_boundary

DIM = 512
IMAGES_PER_IDENTITY = 10
THREADS = 2
GENERATION_CHUNK = 100_000


def _vectors(size: int, queries: int, uniform: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(gallery (size, DIM) fp16, queries (queries, DIM) fp32), both unit-norm, deterministic."""
    generator = torch.Generator().manual_seed(0)
    identities = max(1, size // IMAGES_PER_IDENTITY)
    centres = torch.randn(identities, DIM, generator=generator)  # (I, DIM)
    gallery = torch.empty(size, DIM, dtype=torch.float16)
    for start in range(0, size, GENERATION_CHUNK):  # fp32 only a chunk at a time
        stop = min(start + GENERATION_CHUNK, size)
        noise = torch.randn(stop - start, DIM, generator=generator)
        rows = noise if uniform else centres[torch.arange(start, stop) % identities] + 0.75 * noise
        gallery[start:stop] = torch.nn.functional.normalize(rows, dim=1).half()
    picked = torch.randint(0, identities, (queries,), generator=generator)
    noise = torch.randn(queries, DIM, generator=generator)
    query_rows = noise if uniform else centres[picked] + noise
    return gallery, torch.nn.functional.normalize(query_rows, dim=1)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _build(size: int, queries: int, uniform: bool, folder: str, results) -> None:
    import faiss
    from safetensors.torch import save_file

    from eval.search.gallery_index import build_approximate

    torch.set_num_threads(THREADS)
    faiss.omp_set_num_threads(THREADS)
    gallery, query_rows = _vectors(size, queries, uniform)
    save_file({"features": gallery, "queries": query_rows}, f"{folder}/vectors.safetensors")
    started = time.perf_counter()
    serialized, described = build_approximate(gallery)
    seconds = time.perf_counter() - started
    serialized.numpy().tofile(f"{folder}/approximate.faiss")
    results.put((seconds, described))


def _exact(folder: str, k: int, budget: int, timed: int, results) -> None:
    from safetensors.torch import load_file

    from eval.search.gallery_search import exact_top_k

    torch.set_num_threads(THREADS)
    queries = load_file(f"{folder}/vectors.safetensors")["queries"]
    before, before_rss = peak_rss_mb(), _rss_mb()
    gallery = load_file(f"{folder}/vectors.safetensors")["features"]  # (G, DIM) fp16, as serve holds it

    def rows(start: int, stop: int) -> torch.Tensor:
        return gallery[start:stop]

    latencies, found = [], []
    for query in queries:
        started = time.perf_counter()
        _, indices = exact_top_k(query[None], rows, len(gallery), k=k, memory_budget=budget)
        latencies.append(time.perf_counter() - started)
        found.append(indices[0].tolist())
        if len(latencies) == timed:
            break
    # the rest of the ground truth in one batched pass (not timed)
    _, rest = exact_top_k(queries[len(found) :], rows, len(gallery), k=k, memory_budget=budget)
    held = _rss_mb() - before_rss
    results.put((statistics.median(latencies), peak_rss_mb() - before, held, found + rest.tolist()))


def _approximate(folder: str, k: int, probes: int, results) -> None:
    import faiss
    import numpy as np
    from safetensors.torch import load_file

    torch.set_num_threads(THREADS)
    faiss.omp_set_num_threads(THREADS)
    queries = load_file(f"{folder}/vectors.safetensors")["queries"].numpy()
    before, before_rss = peak_rss_mb(), _rss_mb()
    index = faiss.deserialize_index(np.fromfile(f"{folder}/approximate.faiss", dtype=np.uint8))
    faiss.extract_index_ivf(index).nprobe = probes
    latencies, found = [], []
    for query in queries:
        started = time.perf_counter()
        _, indices = index.search(query[None], k)
        latencies.append(time.perf_counter() - started)
        found.append(indices[0].tolist())
    held = _rss_mb() - before_rss
    results.put((statistics.median(latencies), peak_rss_mb() - before, held, found))


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=100, help="queries for recall (and approximate latency)")
    parser.add_argument("--timed-queries", type=int, default=10, help="single queries timed on exact search")
    parser.add_argument("--probes", type=int, nargs="+", default=[16], help="inverted lists scanned per query")
    parser.add_argument("--budget-mb", type=int, default=256, help="exact search's chunk memory")
    parser.add_argument("--uniform", action="store_true", help="structureless vectors instead of identities")
    args = parser.parse_args(argv)
    k = 10
    print(
        f"{'gallery':>9} {'method':<24} {'ms/query':>9} {'held MB':>8} {'peak MB':>8} {'latency':>8} {'held':>6} "
        f"{'recall@10':>9} {'build s':>8}  (latency and held memory as ratios vs exact)"
    )
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            build_seconds, described = run_in_fresh_process(_build, size, args.queries, args.uniform, folder)
            exact_s, exact_peak, exact_held, truth = run_in_fresh_process(
                _exact, folder, k, args.budget_mb << 20, args.timed_queries
            )
            print(
                f"{size:>9} {'exact':<24} {1000 * exact_s:>9.2f} {exact_held:>8.0f} {exact_peak:>8.0f} {1.0:>8.2f} "
                f"{1.0:>6.2f} {1.0:>9.3f}",
                flush=True,
            )
            for probes in args.probes:
                approx_s, approx_peak, approx_held, found = run_in_fresh_process(_approximate, folder, k, probes)
                recall = statistics.mean(len(set(a) & set(t)) / k for a, t in zip(found, truth, strict=True))
                method = f"{described['factory']}/{probes}"
                print(
                    f"{size:>9} {method:<24} {1000 * approx_s:>9.2f} {approx_held:>8.0f} {approx_peak:>8.0f} "
                    f"{approx_s / exact_s:>8.3f} {approx_held / exact_held:>6.2f} {recall:>9.3f} {build_seconds:>8.1f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
