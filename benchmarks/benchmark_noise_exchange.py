"""Epoch-boundary exchange of the sharded noise table, on real gloo processes of this host.

    python -m benchmarks.benchmark_noise_exchange [--captions 4000000] [--ranks 2 3] [--tokens 77]

Each rank records the scores of its share of the captions (a fresh random assignment per epoch, as the
sampler deals shards anew), then `end_epoch` sends them to their owners and fetches what the rank reads
next. The baseline in the same run is the naive alternative: all-gathering every rank's new scores so
that each rank holds the whole table. Prints seconds, the ratio and the table's bytes per rank."""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.distributed as dist

from benchmarks.gloo_ranks import run_on_ranks
from data.cli_errors import error_boundary
from engine.method.noise_table import ShardedNoiseTable, quantise

CHUNK = 65536


def share_of(epoch: int, captions: int, rank: int, world: int) -> torch.Tensor:
    return torch.randperm(captions, generator=torch.Generator().manual_seed(epoch))[rank::world]


def measure(rank: int, world: int, captions: int, tokens: int) -> dict[str, float]:
    table = ShardedNoiseTable(captions, tokens)
    mine = share_of(0, captions, rank, world)
    valid = torch.ones(CHUNK, tokens, dtype=torch.bool)
    generator = torch.Generator().manual_seed(rank)
    for start in range(0, len(mine), CHUNK):
        ids = mine[start : start + CHUNK]
        table.record(ids, torch.rand(len(ids), tokens, generator=generator) * 2, valid[: len(ids)])
    pending_codes = torch.cat(table.pending_codes)

    dist.barrier()
    started = time.perf_counter()
    table.end_epoch(share_of(1, captions, rank, world))
    dist.barrier()
    exchange = time.perf_counter() - started

    # Baseline: every rank receives every rank's new scores (a replicated table), one all_gather.
    padded = -(-captions // world)
    send = torch.zeros(padded, tokens, dtype=torch.uint8)
    send[: len(pending_codes)] = pending_codes
    receive = [torch.empty_like(send) for _ in range(world)]
    dist.barrier()
    started = time.perf_counter()
    dist.all_gather(receive, send)
    dist.barrier()
    replicate = time.perf_counter() - started
    table_bytes = table.owned.numel() + table.readable_codes.numel() + table.readable_ids.numel() * 8
    return {"exchange_s": exchange, "replicate_s": replicate, "table_mb": table_bytes / 2**20}


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=4_000_000)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--tokens", type=int, default=77)
    args = parser.parse_args(argv)
    print(f"{args.captions:,} captions x {args.tokens} tokens, uint8 scores ({quantise.__module__})")
    print(f"{'ranks':>5}  {'exchange s':>10}  {'all-gather s':>12}  {'ratio':>6}  {'table MB/rank':>13}")
    for world in args.ranks:
        results = run_on_ranks(world, measure, args.captions, args.tokens)
        exchange = max(r["exchange_s"] for r in results)
        replicate = max(r["replicate_s"] for r in results)
        table_mb = max(r["table_mb"] for r in results)
        print(f"{world:>5}  {exchange:>10.2f}  {replicate:>12.2f}  {exchange / replicate:>6.2f}  {table_mb:>13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
