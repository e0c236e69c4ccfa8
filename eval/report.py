"""What `python -m eval` prints and writes: the metric table, split statistics, the results JSON and the
per-query rankings file.

The rankings file (`--save-rankings FILE.json`) is self-describing JSON:

    dataset, split, top_k
    query_captions[q], query_pids[q], query_image_indices[q]   (the image each caption describes)
    gallery_paths[g], gallery_pids[g]
    rankings[q]        the top_k gallery indices for query q, best first (ties keep gallery order)
    scores[q]          their cosine similarities
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from data.datasets import RetrievalSplit, split_stats
from data.outputs import sha256_of
from engine.config import Config, config_to_dict
from engine.model import CLIPDualEncoder
from engine.runtime.checkpoint import MODEL_CONFIG_FILE, MODEL_FILE, described_model_config, is_weights_file

METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def format_table(title: str, metrics: dict) -> str:
    header = "  ".join(f"{k:>6}" for k in METRIC_KEYS)
    values = "  ".join(f"{metrics[k]:6.2f}" for k in METRIC_KEYS)
    return f"{title}\n{header}\n{values}"


def split_title(split: RetrievalSplit) -> str:
    stats = split_stats(split)
    return f"{split.dataset} {split.split}: {stats['ids']} ids, {stats['images']} images, {stats['captions']} captions"


def format_split_stats(splits: list[RetrievalSplit], *, show_missing: bool) -> str:
    """One row per split: ids, images, captions (and missing images when they were skipped)."""
    columns = ("ids", "images", "captions", *(("missing",) if show_missing else ()))
    lines = [f"{splits[0].dataset}", f"{'split':<8}" + "".join(f"{c:>10}" for c in columns)]
    for split in splits:
        row = split_stats(split) | {"missing": len(split.missing_images)}
        lines.append(f"{split.split:<8}" + "".join(f"{row[c]:>10}" for c in columns))
    return "\n".join(lines)


def checkpoint_source(tag_dir: Path, model: CLIPDualEncoder) -> dict:
    """What `--out` records of an exported model: its folder (or weights file), the sha256 of its weights, its
    model_config.json (derived from the weights for a file)."""
    if is_weights_file(tag_dir):
        return {
            "described": str(tag_dir),
            "checkpoint": str(tag_dir),
            "sha256": sha256_of(tag_dir),
            "model_config": described_model_config(model),
        }
    return {
        "described": str(tag_dir),
        "checkpoint": str(tag_dir),
        "sha256": sha256_of(tag_dir / MODEL_FILE),
        "model_config": json.loads((tag_dir / MODEL_CONFIG_FILE).read_text()),
    }


def describe_config_model(config_path: str, config: Config) -> str:
    """ "untrained model of C", or "model of C from its pretrained weights P" when model.pretrained is set."""
    if config.model.pretrained:
        return f"model of {config_path} from {config.model.pretrained}"
    return f"untrained model of {config_path}"


def config_source(config_path: str, config: Config) -> dict:
    """The same for a model built from a config (untrained, or from its pretrained weights), its model section in
    model_config.json's shape."""
    return {
        "described": describe_config_model(config_path, config),
        "checkpoint": None,
        "sha256": None,
        "model_config": {"model": config_to_dict(config.model), "tap_layer": config.nam.tap_layer},
    }


def top_k_rankings(similarity: torch.Tensor, k: int, *, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, scores), each (Q, min(k, G)): the best gallery items per query, best first.

    A stable descending sort per chunk of queries, so ties keep gallery order exactly as eval.metrics ranks
    them (torch.topk does not promise that); memory is O(chunk_size · G)."""
    k = min(k, similarity.shape[1])
    indices, scores = [], []
    for start in range(0, similarity.shape[0], chunk_size):
        ranked = torch.sort(similarity[start : start + chunk_size], dim=1, descending=True, stable=True)
        indices.append(ranked.indices[:, :k])
        scores.append(ranked.values[:, :k])
    return torch.cat(indices), torch.cat(scores)


def write_rankings(path: Path, split: RetrievalSplit, similarity: torch.Tensor, k: int) -> None:
    indices, scores = top_k_rankings(similarity, k)
    rankings = {
        "dataset": split.dataset,
        "split": split.split,
        "top_k": indices.shape[1],
        "query_captions": split.captions,
        "query_pids": split.caption_pids,
        "query_image_indices": split.caption_image_indices,
        "gallery_paths": [str(p) for p in split.image_paths],
        "gallery_pids": split.image_pids,
        "rankings": indices.tolist(),
        "scores": [[round(s, 6) for s in row] for row in scores.tolist()],
    }
    path.write_text(json.dumps(rankings))


def results_json(
    *, dataset: str, split: RetrievalSplit, source: dict, metrics: dict, timings: dict, environment: dict
) -> str:
    """The `--out` file: what was evaluated (data, weights and their hash, model config), metrics, timings, and the
    CPU, libraries and threads they were computed with."""
    result = {
        "dataset": dataset,
        "split": split.split,
        "model": source["described"],
        "checkpoint": source["checkpoint"],  # the tag folder, or null for an untrained config
        "model_sha256": source["sha256"],  # of model.safetensors, or null
        "model_config": source["model_config"],
        "stats": split_stats(split) | {"missing_images": len(split.missing_images)},
        "metrics": metrics,
        "timings": timings,  # encode_seconds, metric_seconds
        "seconds": timings["encode_seconds"] + timings["metric_seconds"],
        "environment": environment,  # engine.runtime.environment.run_environment
    }
    return json.dumps(result, indent=1)
