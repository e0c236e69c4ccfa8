"""Pretraining entry point.

python -m launcher.train --config configs/demo_cpu.yaml [section.key=value ...] [--resume latest|auto|PATH]
    [--overwrite] [--debug]
deepspeed --num_gpus N --module launcher.train --config ... (the launcher adds --local_rank)
launcher/train.sh and launcher/slurm/pretrain.sbatch run it with --resume auto. Exit status: 0 done,
2 a user error (one line; --debug or TBPS_DEBUG=1 shows the traceback), 75 stopped on SIGUSR1/SIGTERM or a remote
shard store that stayed down, after a checkpoint (run it again), 1 a lost rank.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

from data.caption_files import CaptionError
from data.cli_errors import error_boundary
from data.datasets import DatasetError
from data.manifest import ShardError
from engine.config import ConfigError, load_config
from engine.runtime import liveness
from engine.runtime.checkpoint import CheckpointError
from engine.runtime.preemption import (
    EXIT_RESUMABLE,
    StoppedBySignal,
    StoppedOnDataOutage,
    end_data_workers,
    install_stop_handlers,
    resume_target,
)

USER_ERRORS = (ConfigError, ShardError, CaptionError, CheckpointError, DatasetError, FileNotFoundError)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m launcher.train", description="Pretrain the CLIP dual encoder with SDM + NAM."
    )
    parser.add_argument("--config", required=True, help="YAML file in configs/ (only what differs from the defaults)")
    parser.add_argument(
        "--resume",
        default=None,
        help="'latest' (this run's newest checkpoint), 'auto' (latest if there is one, else start fresh) or a folder",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a run folder that holds a run: the old one is moved to RUN_DIR.old-<time>, not deleted",
    )
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=8")
    return parser.parse_intermixed_args(argv)  # overrides before and after the flags alike


@error_boundary
def main(argv: list[str] | None = None) -> int:
    install_stop_handlers()  # first: SIGUSR1/SIGTERM from now on mean "checkpoint at the next step and exit 75"
    args = parse_args(argv)
    rank0 = os.environ.get("RANK", "0") == "0"
    clean, lost_rank = False, False
    try:
        config = load_config(args.config, args.overrides)
        resume = resume_target(args.resume, Path(config.train.run_dir), announce=rank0)
        from engine.runtime.preflight import check_before_training

        resume = check_before_training(config, resume=resume, overwrite=args.overwrite)  # before anything is written
        from engine.runtime.trainer import train  # heavy imports (deepspeed) only once the config is known to be good
        from eval.during_training import TrainingEvaluator

        interpolation = config.data.augment.interpolation  # evaluation resizes as training does
        eval_cache = Path(config.train.run_dir) / "eval_cache"  # benchmark roots given as URLs are fetched here
        final = train(
            config, resume=resume,
            make_evaluator=partial(TrainingEvaluator, interpolation=interpolation, cache=eval_cache),
        )  # fmt: skip
        clean = True
    except USER_ERRORS as error:  # every rank ran the same checks: rank 0 says it once
        if rank0:
            print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    except StoppedBySignal as stop:  # every rank saved the same step; the batch script requeues on this status
        clean = True
        if rank0:
            print(f"{stop}; the same command with --resume auto continues from it", flush=True)
        return EXIT_RESUMABLE
    except StoppedOnDataOutage as stop:  # every rank saved the same step; the rank that could not fetch says why
        clean = True
        if stop.here:
            print(f"error: {stop}", file=sys.stderr, flush=True)
        return EXIT_RESUMABLE
    except RuntimeError:  # a failed collective: when a rank died, name it (once) instead of a traceback per rank
        lost_rank = liveness.lost_ranks_reported()
        if not lost_rank:
            raise
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_initialized() and not lost_rank:  # leaving a group that lost a rank may hang; exiting cleans up
            from engine.runtime.deepspeed_setup import shutdown_distributed  # imported by the trainer already

            shutdown_distributed(clean=clean)
        end_data_workers()
    if rank0:
        print(f"done: model in {final}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
