"""What one agreement of engine/runtime/step_agreement.py costs: the all-gather of a few CPU integers on the gloo control
group that the ranks make every train.agree_every_steps optimizer steps.

deepspeed --num_gpus 2 --module benchmarks.benchmark_agreement [--rounds 500]   (or torchrun --nproc-per-node 2 -m)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from data.cli_errors import error_boundary
from engine.runtime import collectives


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.benchmark_agreement", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    args = parser.parse_args(argv)
    from engine.runtime.deepspeed_setup import init_distributed, shutdown_distributed

    init_distributed()
    row = [16, 0, 0]  # batches held, then one vote per stop signal
    for _ in range(20):  # warmup: the control group's connections
        collectives.agree(row)
    seconds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        collectives.agree(row)
        seconds.append(time.perf_counter() - start)
    if collectives.rank() == 0:
        seconds.sort()
        print(
            f"agreement on {collectives.world_size()} rank(s), {args.rounds} rounds: median "
            f"{1e6 * statistics.median(seconds):.0f} us, p90 {1e6 * seconds[int(0.9 * len(seconds))]:.0f} us"
        )
    shutdown_distributed(clean=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
