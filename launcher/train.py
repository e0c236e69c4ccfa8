"""Pretraining entry point.

python -m launcher.train --config configs/demo_cpu.yaml [section.key=value ...] [--resume latest|PATH]
deepspeed --num_gpus N --module launcher.train --config ... (the launcher adds --local_rank)
"""

from __future__ import annotations

import argparse
import os
import sys

from data.captions import CaptionError
from data.manifest import ShardError
from engine.checkpoint import CheckpointError
from engine.config import ConfigError, load_config
from eval.benchmarks import BenchmarkError

USER_ERRORS = (ConfigError, ShardError, CaptionError, CheckpointError, BenchmarkError, FileNotFoundError)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m launcher.train", description="Pretrain the CLIP dual encoder with SDM + NAM."
    )
    parser.add_argument("--config", required=True, help="YAML file in configs/ (only what differs from the defaults)")
    parser.add_argument("--resume", default=None, help="'latest' (this run's newest checkpoint) or a checkpoint folder")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=8")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        from engine.trainer import train  # heavy imports (deepspeed) only once the config is known to be good

        final = train(config, resume=args.resume)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        print(f"done: model in {final}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
