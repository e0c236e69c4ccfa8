"""A function on several real gloo processes on this machine: what the multi-rank tests and benchmarks share."""

from __future__ import annotations

import os
import traceback

import torch.distributed as dist
import torch.multiprocessing as mp

from engine.runtime.collectives import free_port


def _worker(rank: int, world: int, port: int, function, args: tuple, results) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        results[rank] = ("ok", function(rank, world, *args))
    except BaseException:  # report any failure to the parent instead of hanging it
        results[rank] = ("error", traceback.format_exc())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_on_ranks(world: int, function, *args) -> list:
    """`function(rank, world, *args)` on `world` gloo processes; returns their results in rank order."""
    context = mp.get_context("spawn")
    with context.Manager() as manager:
        results = manager.dict()
        mp.start_processes(
            _worker, args=(world, free_port(), function, args, results), nprocs=world, join=True, start_method="spawn"
        )
        collected = [results[rank] for rank in range(world)]
    errors = [payload for status, payload in collected if status == "error"]
    if errors:
        raise AssertionError("a rank failed:\n" + errors[0])
    return [payload for _, payload in collected]
