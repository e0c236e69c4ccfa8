"""`python -m eval stats`: ids, images and captions of every split of a benchmark, and the CLI's shared bits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.cli_errors import error_boundary
from data.datasets import DATASETS, DatasetError, load_split
from data.remote_datasets import local_root
from eval import report


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="benchmark name")
    parser.add_argument(
        "--root", required=True,
        help="folder holding the annotation file and imgs/, or the URL of one (s3://BUCKET/PREFIX, http(s)://...)",
    )  # fmt: skip
    parser.add_argument(
        "--cache", type=Path, default=None,
        help="with a URL --root: the local folder its annotation file and images are fetched into (kept and reused)",
    )  # fmt: skip
    parser.add_argument("--skip-missing", action="store_true", help="drop missing images (and their captions)")


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval stats", description="ids, images, captions per split")
    add_dataset_args(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    names = DATASETS[args.dataset].splits
    try:
        root = local_root(args.dataset, args.root, cache=args.cache, splits=names)
        splits = [load_split(args.dataset, root, s, skip_missing=args.skip_missing) for s in names]
    except DatasetError as error:
        return fail(error)
    print(report.format_split_stats(splits, show_missing=args.skip_missing))
    return 0


def fail(error: Exception) -> int:
    """One line on stderr, exit status 2; the benchmark reader's hint names the CLI flag here."""
    print(f"error: {str(error).replace('skip_missing=True', '--skip-missing')}", file=sys.stderr)
    return 2
