"""Everything DeepSpeed needs from our config: the process group, the device and the engine config."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from engine.config import Config
from engine.runtime import collectives, liveness


def init_distributed(*, collective_timeout_s: float | None = None, heartbeat: bool = False) -> None:
    """Joins the process group the launcher describes; a plain `python -m launcher.train` is rank 0 of 1.

    A collective that waits longer than `collective_timeout_s` (None: torch's default) fails instead of
    hanging the job. With `heartbeat`, a rank that dies is named (engine/runtime/liveness.py); the caller then
    leaves through `shutdown_distributed`."""
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(collectives.free_port())
        )
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        # Ranks sharing a CPU host would each start one thread per core and fight over them.
        ranks_here = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks_here))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = {} if collective_timeout_s is None else {"timeout": timedelta(seconds=collective_timeout_s)}
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, **timeout)
    _unlink_shared_memory_buffer()
    if heartbeat:
        liveness.start_heartbeat(give_up_after_s=timeout.get("timeout", dist.default_pg_timeout).total_seconds())
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def _unlink_shared_memory_buffer() -> None:
    """DeepSpeed's CPU all-reduce maps one /dev/shm segment per rank (69 MB) and never unlinks it, so every
    run left its segments behind (20 GB of them after a day of tests on one machine). Every rank has mapped
    every segment once init returns, so after a barrier the names can go; the memory lives until exit."""
    if torch.cuda.is_available() or not dist.is_initialized():
        return
    rank = dist.get_rank()
    address, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    dist.barrier()
    Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_{rank}").unlink(missing_ok=True)


def shutdown_distributed(*, clean: bool) -> None:
    """Stops the heartbeat and leaves the process group. `clean` means every rank got here together: a
    barrier then makes sure that no heartbeat still talks to rank 0's store when rank 0 exits."""
    liveness.stop_heartbeat()
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def resolve_precision(precision: str) -> str:
    """`auto` means bf16 on CUDA and fp32 on the CPU."""
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return precision


def deepspeed_config(config: Config, *, world_size: int) -> dict:
    """Batch sizes, ZeRO stage, precision and clipping. The optimizer and scheduler are torch objects built by
    engine/runtime/schedule.py and handed to deepspeed.initialize, so the config declares neither.

    fp16_reference enables neither the fp16 nor the bf16 section: DeepSpeed's plain path then leaves the
    parameters in the dtypes engine/runtime/reference_precision.py gave them and hands the torch optimizer over unwrapped,
    so it steps the fp16 weights directly, with no fp32 master copy and no loss scaler."""
    train, optim = config.train, config.optim
    precision = resolve_precision(train.precision)
    return {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.batch_size * train.grad_accum * world_size,
        "gradient_clipping": optim.grad_clip,  # 0: no clipping (the reference)
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10**9,  # our own logger reports progress
        "wall_clock_breakdown": False,
    }
