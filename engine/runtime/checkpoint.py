"""Checkpoints: DeepSpeed's own files plus our per-rank state and an exported model, made visible
atomically through the `latest` file only once every rank has finished writing.

Layout of RUN_DIR/checkpoints/<tag>/:
  DeepSpeed's model and optimizer states (written by engine.save_checkpoint)
  rank00000_state.safetensors   that rank's part of the noise table, its data position and torch RNG state
  model.safetensors             fp32 weights of the dual encoder, for eval and export (rank 0); training-only
                                heads (IRRA's ID and MLM) are in DeepSpeed's files only
  model_config.json             the ModelConfig and tap layer that rebuild it
  train_state.json              epoch, batches done in that epoch, optimizer step
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from data.outputs import atomic_file, write_text_atomically
from engine.config import ConfigError, ModelConfig, build_section, config_to_dict
from engine.method.noise_table import ShardedNoiseTable
from engine.model import CLIPDualEncoder
from engine.model.build import build_model_from_weights
from engine.model.training_model import dual_encoder
from engine.runtime import collectives

LATEST = "latest"
BEST = "best.json"  # {"tag", "eval", "split", "R1"}: the checkpoint with the best validation R1
MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model_config.json"
TRAIN_STATE_FILE = "train_state.json"


class CheckpointError(ValueError):
    """A checkpoint path that cannot be used; the message names it."""


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_file(path) as partial:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial))


def _rank_state_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"rank{rank:05d}_state.safetensors"


def export_model(model: nn.Module, out_dir: Path, model_config: ModelConfig, tap_layer: int) -> None:
    """fp32 safetensors weights plus the config that rebuilds the model without any pretrained file. Only the dual
    encoder is written: training heads around it are left out."""
    model = dual_encoder(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_save_tensors(out_dir / MODEL_FILE, {k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    described = config_to_dict(model_config) | {"pretrained": None}
    write_text_atomically(
        out_dir / MODEL_CONFIG_FILE, json.dumps({"model": described, "tap_layer": tap_layer}, indent=1)
    )


def save_checkpoint(
    ds_engine,
    checkpoint_dir: Path,
    *,
    tag: str,
    train_state: dict,
    noise_table: ShardedNoiseTable,
    model_config: ModelConfig,
    tap_layer: int,
    keep: int,
    data_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Every rank calls this at the same step; returns the tag folder."""
    tag_dir = checkpoint_dir / tag
    ds_engine.save_checkpoint(
        str(checkpoint_dir), tag=tag, client_state={"train_state": train_state}, save_latest=False
    )
    rank = collectives.rank()
    _hold_for_fault_injection(tag, rank)
    rank_state = {f"noise_table.{k}": v for k, v in noise_table.state_dict().items()} | {
        "torch_rng": torch.get_rng_state()
    }
    rank_state |= {f"data.{k}": v for k, v in (data_state or {}).items()}
    _atomic_save_tensors(_rank_state_file(tag_dir, rank), rank_state)
    if rank == 0:
        export_model(ds_engine.module, tag_dir, model_config, tap_layer)
        write_text_atomically(tag_dir / TRAIN_STATE_FILE, json.dumps(train_state, indent=1))
    collectives.barrier()  # `latest` may point here only once every rank's files are complete
    if rank == 0:
        write_text_atomically(checkpoint_dir / LATEST, tag)
        _prune(checkpoint_dir, keep=keep, current=tag)
    collectives.barrier()
    return tag_dir


def _hold_for_fault_injection(tag: str, rank: int) -> None:
    """Fault-injection hook for the fault tests: with TBPS_FAULT_HOLD_SAVE=TAG:DIR in the environment, every rank
    but rank 0 stops inside the save of checkpoint TAG (after DeepSpeed's files, before its own), says so with a
    file DIR/rankN.holding, and waits there until it is killed, while rank 0 goes on to wait for it in the save's
    barrier. A test then knows, without racing the clock, that the save is in progress when it kills a rank.
    Unset, this costs one environment lookup per checkpoint."""
    hold = os.environ.get("TBPS_FAULT_HOLD_SAVE")
    if not hold or hold.partition(":")[0] != tag or rank == 0:
        return
    folder = Path(hold.partition(":")[2])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{rank}.holding").write_text(str(os.getpid()))
    while True:
        time.sleep(1.0)


def _training_position(tag_dir: Path) -> tuple[int, int]:
    """(epoch, batches done): the order checkpoints were written in, whatever their tags are called."""
    state = json.loads((tag_dir / TRAIN_STATE_FILE).read_text())
    return int(state["epoch"]), int(state["batches_done"])


def _prune(checkpoint_dir: Path, *, keep: int, current: str) -> None:
    """Removes the oldest checkpoints beyond `keep`; the current and the best one always stay."""
    best = json.loads((checkpoint_dir / BEST).read_text())["tag"] if (checkpoint_dir / BEST).is_file() else None
    tags = sorted(
        (p for p in checkpoint_dir.iterdir() if p.is_dir() and (p / TRAIN_STATE_FILE).is_file()), key=_training_position
    )
    for old in [p for p in tags if p.name not in (current, best)][: max(0, len(tags) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def mark_best(checkpoint_dir: Path, tag: str, record: dict, *, metric: str = "R1") -> bool:
    """Points best.json at `tag` when its validation `metric` beats the one recorded; returns whether it did."""
    path = checkpoint_dir / BEST
    if path.is_file() and json.loads(path.read_text())[metric] >= record[metric]:
        return False
    best = {"tag": tag, "eval": record["eval"], "split": record["split"], metric: record[metric]}
    write_text_atomically(path, json.dumps(best, indent=1))
    return True


def resolve_tag_dir(path: str | Path) -> Path:
    """A tag folder, a checkpoints folder holding `latest`, or a run folder holding checkpoints/."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        latest = candidate / LATEST
        if latest.is_file():
            path = candidate / latest.read_text().strip()
            break
    if not (path / TRAIN_STATE_FILE).is_file() and not (path / MODEL_FILE).is_file():
        raise CheckpointError(
            f"no checkpoint at {path} (expected a tag folder with {MODEL_FILE}, or a folder with a '{LATEST}' file)"
        )
    return path


def _part(rank_file: Path, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in load_file(str(rank_file)).items() if k.startswith(prefix)}


def _noise_table_part(rank_file: Path) -> dict[str, torch.Tensor]:
    return _part(rank_file, "noise_table.")


def load_data_positions(tag_dir: Path, ranks: list[int]) -> list[dict[str, torch.Tensor]]:
    """The data-stream positions that `ranks` saved in this checkpoint (empty dicts where none was saved)."""
    return [_part(_rank_state_file(tag_dir, r), "data.") for r in ranks]


def load_checkpoint(ds_engine, tag_dir: Path, noise_table: ShardedNoiseTable) -> dict:
    """Restores DeepSpeed state, the noise table and this rank's RNG; returns the train state.

    On the world size that wrote it, every rank gets its own part back, mid-epoch state included. On
    another world size each rank takes the rows it now owns from every old rank's file; the caller then
    runs the rest of the interrupted epoch in a new order and refreshes what the ranks read in it."""
    try:
        loaded_path, client_state = ds_engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    except RuntimeError as error:
        if "state_dict" not in str(error):
            raise
        found = " ".join(str(error).split("\n", 1)[-1].split())  # torch's missing / unexpected key lists
        raise CheckpointError(
            f"checkpoint {tag_dir} holds other parameters than this run's model (were loss.id_weight, "
            f"loss.mlm_weight or model.* changed?): {found[:300]}"
        ) from None
    if loaded_path is None or client_state is None:
        raise CheckpointError(f"DeepSpeed could not load the checkpoint at {tag_dir}")
    train_state = client_state["train_state"]
    if train_state["world_size"] == collectives.world_size():
        rank_file = _rank_state_file(tag_dir, collectives.rank())
        if not rank_file.is_file():
            raise CheckpointError(f"checkpoint {tag_dir} lacks {rank_file.name}")
        try:
            noise_table.load_state_dict(_noise_table_part(rank_file))
            torch.set_rng_state(load_file(str(rank_file))["torch_rng"])
        except (SafetensorError, OSError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint {tag_dir} is damaged: {rank_file} is unreadable ({error})") from None
        return train_state
    old_files = [_rank_state_file(tag_dir, r) for r in range(train_state["world_size"])]
    missing = [f.name for f in old_files if not f.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {tag_dir} lacks {missing[0]} (written by {train_state['world_size']} ranks)")
    noise_table.load_owned_from([_noise_table_part(f) for f in old_files])
    if collectives.rank() == 0:
        print(
            f"note: checkpoint {tag_dir} was written by {train_state['world_size']} ranks, this run has "
            f"{collectives.world_size()}: the noise table is re-sharded and the rest of epoch {train_state['epoch']} "
            "runs in a new order",
            flush=True,
        )
    return train_state


def is_weights_file(path: str | Path) -> bool:
    """A single weights file (OpenAI's ViT-B-16.pt, an authors' .pth checkpoint, a safetensors file) rather than
    one of this project's run, checkpoints or tag folders."""
    return Path(path).is_file()


def load_weights_file(path: str | Path) -> CLIPDualEncoder:
    """The dual encoder a weights file describes, its config derived from the shapes; says in one line (stderr)
    which format it recognised and what it loaded, ignored and resampled."""
    try:
        model, weights = build_model_from_weights(str(path))
    except ConfigError as error:  # WeightsError included: one line naming the file
        raise CheckpointError(str(error)) from None
    print(weights.describe(), file=sys.stderr, flush=True)
    return model


def described_model_config(model: CLIPDualEncoder) -> dict:
    """A model's config in model_config.json's shape (what an exported folder records)."""
    return {"model": config_to_dict(model.cfg) | {"pretrained": None}, "tap_layer": model.tap_layer}


def load_exported_model(path: str | Path) -> tuple[CLIPDualEncoder, Path]:
    """Builds the dual encoder from an exported model folder (or a checkpoint / run folder), or from a weights file
    (load_weights_file); returns it with the folder or file it came from."""
    if is_weights_file(path):
        return load_weights_file(path), Path(path)
    tag_dir = resolve_tag_dir(path)
    config_path, weights_path = tag_dir / MODEL_CONFIG_FILE, tag_dir / MODEL_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"checkpoint {tag_dir} lacks {MODEL_CONFIG_FILE} or {MODEL_FILE}")
    try:
        described = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise CheckpointError(f"{config_path} is damaged: not readable JSON ({error})") from None
    if not isinstance(described, dict) or not isinstance(described.get("model"), dict):
        raise CheckpointError(f"{config_path} is damaged: expected a JSON object with a 'model' mapping")
    try:
        model_config = build_section(ModelConfig, described["model"], "model")
        model = CLIPDualEncoder(model_config, tap_layer=int(described["tap_layer"]))
        weights = load_file(str(weights_path))
    except (KeyError, TypeError, ValueError, ConfigError, RuntimeError, OSError, SafetensorError) as error:
        raise CheckpointError(f"cannot load the model in {tag_dir}: {str(error).splitlines()[0]}") from None
    expected = model.state_dict()
    mismatched = [
        f"{key}: file {tuple(value.shape)}, model {tuple(expected[key].shape)}"
        for key, value in weights.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if mismatched:
        raise CheckpointError(
            f"{weights_path} does not match the model its {MODEL_CONFIG_FILE} describes ({len(mismatched)} shapes "
            f"differ, first: {'; '.join(mismatched[:3])})"
        )
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:
        raise CheckpointError(f"cannot load {weights_path}: {' '.join(str(error).split())[:300]}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model, tag_dir
