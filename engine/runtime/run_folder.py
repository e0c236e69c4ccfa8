"""The run folder's state and the checkpoint to resume, checked before training writes anything.

A fresh start (no --resume) into a folder that already holds a run is refused: the run would overwrite its
checkpoints, repoint `latest` and append to its metrics. So is one into a non-empty folder that training did not
make (it marks its run folders with data.outputs' OWNER_FILE): training would write config.yaml and metrics.jsonl
among files it does not own. `--overwrite` moves the old folder aside to a timestamped sibling
(RUN_DIR.old-YYYYmmdd-HHMMSS) and starts over; nothing is deleted.

A checkpoint to resume is read before any process group exists: its small files are parsed and DeepSpeed's files
opened as the zip archives they are, so a damaged file is named in one line. When the damaged checkpoint is the
run's newest (`--resume latest` or `auto`), training falls back to the newest intact one and says so; for a
checkpoint named by path it names the intact one to pass instead. The checkpoint's model must be the one the
config builds.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from safetensors import SafetensorError, safe_open

from data.outputs import folder_owner, move_aside
from engine.config import Config, ConfigError, config_to_dict
from engine.runtime.checkpoint import (
    LATEST,
    MODEL_CONFIG_FILE,
    MODEL_FILE,
    TRAIN_STATE_FILE,
    CheckpointError,
    resolve_tag_dir,
)

FINAL = "final"
CHECKPOINTS = "checkpoints"
TOOL = "python -m launcher.train"  # the owner recorded in every run folder training makes


class RunFolderError(ConfigError):
    """A run folder whose state does not allow what the command asks; the message says what to pass instead."""


def existing_run(run_dir: Path) -> str | None:
    """What makes `run_dir` hold a run already (its checkpoints or its final model), or None."""
    checkpoints = run_dir / CHECKPOINTS
    if (checkpoints / LATEST).is_file():
        return f"checkpoints (latest: {(checkpoints / LATEST).read_text().strip()})"
    if checkpoints.is_dir() and any((p / TRAIN_STATE_FILE).is_file() for p in checkpoints.iterdir()):
        return "checkpoints"
    if (run_dir / FINAL).is_dir():
        return "a final model"
    return None


def foreign_files(run_dir: Path) -> str | None:
    """What makes `run_dir` a folder that training did not make (a file in it, or the tool that wrote it), or
    None for a missing or empty folder, or one that training made."""
    owner = folder_owner(run_dir)
    if owner == TOOL:
        return None
    if owner is not None:
        return f"the output of `{owner}`"
    first = next(iter(sorted(run_dir.iterdir())), None)
    return None if first is None else f"files training did not write ({first.name})"


def prepare_run_folder(run_dir: Path, *, resume: str | None, overwrite: bool, rank: int = 0) -> Path | None:
    """Checks `run_dir` for the start asked for; with `overwrite` rank 0 moves an old run aside and returns where
    it went. Raises RunFolderError otherwise."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"train.run_dir {run_dir} is an existing file; choose a folder")
    if not run_dir.exists() and run_dir.parent.exists() and not run_dir.parent.is_dir():
        raise RunFolderError(f"train.run_dir {run_dir}: {run_dir.parent} is a file")
    if overwrite and resume:
        raise RunFolderError("--overwrite starts the run over; it cannot be combined with --resume")
    if resume or not run_dir.is_dir():
        return None
    found, foreign = existing_run(run_dir), foreign_files(run_dir)
    if found is None and foreign is None:
        return None
    if not overwrite and found is not None:
        raise RunFolderError(
            f"train.run_dir {run_dir} already holds {found}; pass --resume auto to continue it, --overwrite to move "
            "it aside and start over, or choose another train.run_dir"
        )
    if not overwrite:
        raise RunFolderError(
            f"train.run_dir {run_dir} holds {foreign}; choose another train.run_dir, or pass --overwrite to move "
            "the folder aside and start there"
        )
    if rank != 0:  # rank 0 moves it; the others only start once the process group (after rank 0's move) exists
        return None
    moved = move_aside(run_dir)
    print(f"--overwrite: moved the old {'run' if found else 'folder'} {run_dir} to {moved}", flush=True)
    return moved


def damage(tag_dir: Path) -> str | None:
    """None for a checkpoint whose files all read, else one line naming the first damaged file."""
    for name in (TRAIN_STATE_FILE, MODEL_CONFIG_FILE):
        path = tag_dir / name
        if not path.is_file():
            return f"{path} is missing"
        try:
            if not isinstance(json.loads(path.read_text()), dict):
                return f"{path} is not a JSON object"
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
            return f"{path} is unreadable ({type(error).__name__})"
    state = json.loads((tag_dir / TRAIN_STATE_FILE).read_text())
    world = state.get("world_size")
    if not isinstance(world, int) or world < 1 or not isinstance(state.get("epoch"), int):
        return f"{tag_dir / TRAIN_STATE_FILE} lacks epoch or world_size"
    tensors = [tag_dir / MODEL_FILE] + [tag_dir / f"rank{r:05d}_state.safetensors" for r in range(world)]
    for path in tensors:
        if not path.is_file():
            return f"{path} is missing"
        try:
            with safe_open(str(path), "pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as error:
            return f"{path} is unreadable ({' '.join(str(error).split())[:120]})"
    deepspeed_files = sorted(tag_dir.glob("*.pt"))
    if not deepspeed_files:
        return f"{tag_dir} holds no DeepSpeed state (*.pt)"
    for path in deepspeed_files:
        try:
            with zipfile.ZipFile(path):  # torch.save writes a zip archive; a cut one has no central directory
                pass
        except (zipfile.BadZipFile, OSError) as error:
            return f"{path} is unreadable ({error})"
    return None


def _training_position(tag_dir: Path) -> tuple[int, int]:
    try:
        state = json.loads((tag_dir / TRAIN_STATE_FILE).read_text())
        return int(state["epoch"]), int(state["batches_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return (-1, -1)


def intact_before(tag_dir: Path) -> Path | None:
    """The newest intact checkpoint written before `tag_dir`, beside it."""
    own = _training_position(tag_dir)
    own = own if own >= (0, 0) else (float("inf"), 0)  # its own train state is the damage: every other one is older
    older = [
        p
        for p in tag_dir.parent.iterdir()
        if p.is_dir() and p != tag_dir and (p / TRAIN_STATE_FILE).is_file() and _training_position(p) <= own
    ]
    for candidate in sorted(older, key=_training_position, reverse=True):
        if damage(candidate) is None:
            return candidate
    return None


def resume_checkpoint(resume: str | None, run_dir: Path, *, announce: bool) -> Path | None:
    """The tag folder to resume from (`resume` as resume_target returns it: None, "latest" or a path)."""
    if not resume:
        return None
    path = run_dir / CHECKPOINTS if resume == "latest" else Path(resume)
    through_latest = any((p / LATEST).is_file() for p in (path, path / CHECKPOINTS))
    tag_dir = resolve_tag_dir(path)
    if not (tag_dir / TRAIN_STATE_FILE).exists() and not any(tag_dir.glob("*.pt")):
        raise CheckpointError(
            f"{tag_dir} is an exported model, not a training checkpoint; --resume takes a run folder or a folder "
            "under its checkpoints/ (model.pretrained=... starts a new run from exported weights)"
        )
    found = damage(tag_dir)
    if found is None:
        return tag_dir
    fallback = intact_before(tag_dir)
    if fallback is not None and through_latest:
        if announce:
            print(
                f"note: checkpoint {tag_dir} is damaged ({found}); resuming from the previous one, {fallback}",
                flush=True,
            )
        return fallback
    offer = f"; the previous checkpoint is intact: --resume {fallback}" if fallback else ""
    raise CheckpointError(f"checkpoint {tag_dir} is damaged: {found}{offer}")


def check_compatible(tag_dir: Path, config: Config) -> None:
    """The checkpoint's model must be the one `config` builds (model.pretrained aside: the weights come from it)."""
    described = json.loads((tag_dir / MODEL_CONFIG_FILE).read_text())
    saved = described.get("model") if isinstance(described.get("model"), dict) else {}
    wanted = config_to_dict(config.model)
    differing = [
        f"model.{key}: checkpoint {saved.get(key)!r}, this run {value!r}"
        for key, value in wanted.items()
        if key != "pretrained" and saved.get(key) != value
    ]
    if described.get("tap_layer") != config.nam.tap_layer:
        differing.append(f"nam.tap_layer: checkpoint {described.get('tap_layer')!r}, this run {config.nam.tap_layer}")
    if differing:
        raise CheckpointError(
            f"checkpoint {tag_dir} holds another model than this config builds ({'; '.join(differing[:3])}); "
            "resume with the run's own settings or start a new train.run_dir"
        )


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)
