"""`python -m eval [run]`: text-to-image retrieval metrics of a checkpoint (or of the model a config builds) on one
split of a dataset.

python -m eval run --checkpoint RUN_DIR|CHECKPOINT_DIR|WEIGHTS_FILE --dataset cuhk-pedes --root DIR [--split test]
    [--out results.json] [--save-rankings rankings.json [--top-k 10]] [--html DIR [--html-queries 20]]
python -m eval run --config configs/X.yaml --dataset ...   # the model as the config builds it, untrained
python -m eval run ... --root s3://BUCKET/PREFIX --cache DIR  # a benchmark folder in object storage, fetched to DIR
(`run` may be left out: a command line that starts with an option is a `run`.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from data.cli_errors import error_boundary, non_negative_int, positive_int
from data.datasets import DatasetError, load_split
from data.object_store import is_remote
from data.outputs import (
    OutputError,
    atomic_folder,
    check_output_file,
    check_output_folder,
    output_argument,
    write_text_atomically,
)
from data.remote_datasets import local_root
from engine.config import ConfigError, load_config
from engine.model import build_model
from engine.runtime import collectives
from engine.runtime.checkpoint import CheckpointError, load_exported_model, resolve_tag_dir
from engine.runtime.environment import run_environment
from eval import report
from eval.encode import encode_split
from eval.html import write_html
from eval.image_check import drop_undecodable
from eval.metrics import retrieval_metrics_from_features
from eval.stats import add_dataset_args, fail

HTML_TOOL = "python -m eval run --html"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eval run", description="Text-to-image retrieval metrics (R1, R5, R10, mAP, mINP)."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint",
        help="a run folder, its checkpoints/ folder, one checkpoint folder, or a weights file (an authors' .pth "
        "checkpoint, OpenAI's ViT-B-16.pt): its model is derived from the shapes",
    )
    source.add_argument(
        "--config", help="evaluate the model this config builds (its pretrained weights or random init)"
    )
    add_dataset_args(parser)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--workers", type=non_negative_int, default=0, help="image loading workers")
    output_argument(
        parser, "--out", kind="file", help="also write metrics, stats, model provenance and timings as JSON"
    )
    output_argument(parser, "--save-rankings", kind="file", help="write each query's top-k gallery indices (JSON)")
    parser.add_argument("--top-k", type=int, default=10, help="gallery items kept per query in --save-rankings")
    output_argument(
        parser, "--html", kind="folder", help="write DIR/index.html: sampled queries and their top 10 images"
    )
    parser.add_argument("--html-queries", type=int, default=20, help="queries shown in --html")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing --out, --save-rankings and --html outputs"
    )
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="config overrides with --config, e.g. model.pretrained=PATH")
    return parser.parse_args(argv)


def build(args: argparse.Namespace):
    """The model, where it came from (see eval.report.checkpoint_source) and how images are resized: the config's
    data.augment.interpolation, or bilinear (the reference's test transform) for a checkpoint."""
    if args.checkpoint:
        model, tag_dir = load_exported_model(args.checkpoint)
        return model, report.checkpoint_source(tag_dir, model), "bilinear"
    config = load_config(args.config, args.overrides)
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, tap_layer=config.nam.tap_layer)
    return model, report.config_source(args.config, config), config.data.augment.interpolation


@error_boundary
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched with several ranks: extract features on all
        from engine.runtime.deepspeed_setup import init_distributed  # deepspeed only when the launcher started us

        init_distributed()
    try:
        return evaluate(args)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def check_outputs(args: argparse.Namespace) -> None:
    inputs = [Path(path) for path in (args.config, args.cache if is_remote(args.root) else args.root) if path]
    if args.checkpoint:  # the checkpoint read; results may go beside it in the run folder
        try:
            inputs.append(resolve_tag_dir(args.checkpoint))
        except CheckpointError:
            inputs.append(Path(args.checkpoint))  # named again, in full, by the load
    for flag in ("out", "save_rankings"):
        if getattr(args, flag):
            path = getattr(args, flag)
            check_output_file(path, flag=f"--{flag.replace('_', '-')}", overwrite=args.overwrite, protect=inputs)
    if args.out and args.save_rankings and Path(args.out).resolve() == Path(args.save_rankings).resolve():
        raise OutputError(f"--out and --save-rankings name the same file {args.out}; give each its own")
    if args.html:
        check_output_folder(args.html, flag="--html", overwrite=args.overwrite, protect=inputs, tool=HTML_TOOL)


def evaluate(args: argparse.Namespace) -> int:
    if args.top_k < 1 or args.html_queries < 1:
        return fail(ValueError(f"--top-k and --html-queries must be >= 1 (got {args.top_k}, {args.html_queries})"))
    try:
        check_outputs(args)  # before any work: a mistyped path fails now, not after scoring
        root = local_root(args.dataset, args.root, cache=args.cache, splits=(args.split,))
        split = load_split(args.dataset, root, args.split, skip_missing=args.skip_missing)
        split, _ = drop_undecodable(split, skip=args.skip_missing)
        model, source, interpolation = build(args)
    except (DatasetError, CheckpointError, ConfigError) as error:
        return fail(error)
    if split.missing_images:
        print(
            f"note: skipped {len(split.missing_images)} missing or undecodable images and their captions "
            f"(first: {split.missing_images[0]})",
            file=sys.stderr,
        )
    start = time.perf_counter()
    image_feats, text_feats = encode_split(
        model,
        split,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=collectives.device(),
        interpolation=interpolation,
    )
    encoded = time.perf_counter()
    if collectives.rank() != 0:  # every rank extracted its share; rank 0 ranks and reports
        return 0
    # Ranked chunk by chunk from the features: the (Q, G) matrix never exists (ICFG-PEDES: 1.6 GB).
    metrics = retrieval_metrics_from_features(
        text_feats.cpu(), image_feats.cpu(), torch.tensor(split.caption_pids), torch.tensor(split.image_pids)
    )
    timings = {"encode_seconds": encoded - start, "metric_seconds": time.perf_counter() - encoded}
    print(report.format_table(f"{report.split_title(split)}; {source['described']}", metrics))
    if args.out:
        write_text_atomically(
            args.out,
            report.results_json(
                dataset=args.dataset,
                split=split,
                source=source,
                metrics=metrics,
                timings=timings,
                environment=run_environment(),
            ),
        )
    if args.save_rankings or args.html:
        similarity = (text_feats @ image_feats.t()).cpu()  # (Q, G) cosine, only for the per-query outputs
    if args.save_rankings:
        report.write_rankings(args.save_rankings, split, similarity, args.top_k)
    if args.html:
        with atomic_folder(args.html, tool=HTML_TOOL) as partial:  # replaced whole, never file by file
            write_html(partial, split, similarity, num_queries=args.html_queries)
        print(f"wrote {args.html / 'index.html'}", file=sys.stderr)
    return 0
