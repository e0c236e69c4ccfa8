"""Procedurally drawn pedestrians with MLLM-style captions: a small, deterministic stand-in for LUPerson-MLLM
(pretraining) and CUHK-PEDES (held-out test), so the system can be trained and evaluated end to end without the
real data (docs/method.md).

    python -m data.synthetic --out demo_data [--seed 0] [--train-images 2000] [--test-identities 100]
        [--images-per-test-identity 3] [--noise-fraction 0.15] [--dirty-fraction 0.03] [--size 128x64]

Prints the summary of counts and the rate in images per minute; a bad argument or output directory gives one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence

from data.cli_errors import error_boundary
from data.outputs import output_argument
from data.synthetic.errors import SyntheticDataError
from data.synthetic.generate import (
    CUHK_DIR,
    DEFAULT_DIRTY_FRACTION,
    DEFAULT_IMAGES_PER_TEST_IDENTITY,
    DEFAULT_NOISE_FRACTION,
    DEFAULT_SIZE,
    DEFAULT_SPLIT_IDENTITIES,
    DEFAULT_TEST_IDENTITIES,
    DEFAULT_TRAIN_IMAGES,
    PRETRAIN_DIR,
    generate,
)


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected HxW such as 128x64 (got {text!r})")
    return int(match.group(1)), int(match.group(2))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    output_argument(
        parser, "--out", kind="subfolders", subfolders=(PRETRAIN_DIR, CUHK_DIR), required=True,
        help="output directory (gets luperson_mllm/ and cuhk_pedes/)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=DEFAULT_TRAIN_IMAGES)
    parser.add_argument("--test-identities", type=int, default=DEFAULT_TEST_IDENTITIES)
    parser.add_argument("--images-per-test-identity", type=int, default=DEFAULT_IMAGES_PER_TEST_IDENTITY)
    parser.add_argument("--noise-fraction", type=float, default=DEFAULT_NOISE_FRACTION)
    parser.add_argument("--dirty-fraction", type=float, default=DEFAULT_DIRTY_FRACTION)
    parser.add_argument("--size", type=_parse_size, default=DEFAULT_SIZE, help="HxW pixels (default 128x64)")
    parser.add_argument("--split-identities", type=int, default=DEFAULT_SPLIT_IDENTITIES, help="CUHK train/val ids")
    parser.add_argument("--overwrite", action="store_true", help="replace existing luperson_mllm/ and cuhk_pedes/")
    parser.add_argument("--no-progress", action="store_true")
    return parser


@error_boundary
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        summary = generate(
            args.out,
            seed=args.seed,
            train_images=args.train_images,
            test_identities=args.test_identities,
            images_per_test_identity=args.images_per_test_identity,
            noise_fraction=args.noise_fraction,
            dirty_fraction=args.dirty_fraction,
            size=args.size,
            split_identities=args.split_identities,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (SyntheticDataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print(json.dumps(summary, indent=2))
    print(
        f"{summary['images']} images in {seconds:.1f} s: {summary['images'] / seconds * 60:,.0f} images/minute (one process)"
    )
    return 0
