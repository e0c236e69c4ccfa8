"""Evaluate text-to-image retrieval.

python -m eval --checkpoint RUN_DIR|CHECKPOINT_DIR --dataset cuhk-pedes --root DIR [--split test]
python -m eval --config configs/X.yaml --dataset ...   # the model as the config builds it, untrained
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from engine.checkpoint import CheckpointError, load_exported_model
from engine.config import ConfigError, load_config
from engine.model import build_model
from eval.benchmarks import DATASETS, BenchmarkError, load_split, split_stats
from eval.encode import encode_split
from eval.metrics import retrieval_metrics

METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eval", description="Text-to-image retrieval metrics (R1, R5, R10, mAP, mINP)."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a run folder, its checkpoints/ folder, or one checkpoint folder")
    source.add_argument(
        "--config", help="evaluate the model this config builds (its pretrained weights or random init)"
    )
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="benchmark name")
    parser.add_argument("--root", required=True, help="folder holding the annotation file and imgs/")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="image loading workers")
    parser.add_argument("--out", type=Path, help="also write the metrics as JSON here")
    parser.add_argument("overrides", nargs="*", help="config overrides with --config, e.g. model.pretrained=PATH")
    return parser.parse_args(argv)


def build(args: argparse.Namespace):
    if args.checkpoint:
        model, tag_dir = load_exported_model(args.checkpoint)
        return model, str(tag_dir)
    config = load_config(args.config, args.overrides)
    torch.manual_seed(config.train.seed)
    return build_model(config.model, tap_layer=config.nam.tap_layer), f"untrained model of {args.config}"


def format_table(title: str, metrics: dict) -> str:
    header = "  ".join(f"{k:>6}" for k in METRIC_KEYS)
    values = "  ".join(f"{metrics[k]:6.2f}" for k in METRIC_KEYS)
    return f"{title}\n{header}\n{values}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        split = load_split(args.dataset, args.root, args.split)
        model, described = build(args)
    except (BenchmarkError, CheckpointError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stats = split_stats(split)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    image_feats, text_feats = encode_split(
        model, split, batch_size=args.batch_size, num_workers=args.workers, device=device
    )
    similarity = text_feats @ image_feats.t()  # (Q, G) cosine
    metrics = retrieval_metrics(similarity.cpu(), torch.tensor(split.caption_pids), torch.tensor(split.image_pids))
    seconds = time.perf_counter() - start
    title = (
        f"{split.dataset} {args.split}: {stats['ids']} ids, {stats['images']} images, {stats['captions']} captions; "
        f"{described}"
    )
    print(format_table(title, metrics))
    if args.out:
        result = {
            "dataset": args.dataset,
            "split": args.split,
            "model": described,
            "stats": stats,
            "metrics": metrics,
            "seconds": seconds,
        }
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
