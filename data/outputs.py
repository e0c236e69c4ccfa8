"""Output paths that every command checks before its work, and writes that never happen in place.

A command checks its outputs first (`check_output_file`, `check_output_folder`), so that a mistyped path fails in
one line before hours of work, not after. It then writes to a hidden temporary sibling and renames it over the
target only when the output is complete (`atomic_file`, `atomic_folder`): a failure leaves the old output as it
was, and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

# Files that mark a folder as a training checkpoint, a run folder or a checkpoints folder: never an output target.
CHECKPOINT_MARKERS = ("train_state.json", "model_config.json", "latest", "checkpoints", "mp_rank_00_model_states.pt")


class OutputError(ValueError):
    """An output path that cannot or must not be written; the message names it and the flag."""


def check_output_file(path: Path, *, flag: str, overwrite: bool = False) -> Path:
    """A file path whose folder exists and which is not a folder (nor, without `overwrite`, an existing file)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; name a file")
    if not path.parent.is_dir():
        raise OutputError(f"{flag} {path}: its folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise OutputError(f"{flag} {path} already exists; choose another name, or pass --overwrite to replace it")
    return path


def holds_checkpoint(folder: Path) -> str | None:
    """The marker file that makes `folder` a checkpoint or run folder, or None."""
    for marker in CHECKPOINT_MARKERS:
        if (folder / marker).exists():
            return marker
    return None


def check_output_folder(path: Path, *, flag: str, overwrite: bool = False, protect: list[Path] = ()) -> Path:
    """A folder to create, or an empty one; an existing non-empty one only with `overwrite`, and never a folder
    that holds a checkpoint or contains one of `protect` (the inputs of the command)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is an existing file; name a folder")
    if not path.parent.is_dir():
        raise OutputError(f"{flag} {path}: its folder {path.parent} does not exist")
    resolved = path.resolve()
    for source in protect:
        source = Path(source).resolve()
        if resolved == source or resolved in source.parents or source in resolved.parents:
            raise OutputError(f"{flag} {path} overlaps the input {source}; choose a folder outside it")
    for marker in ("latest", "train_state.json"):  # a checkpoints folder or a checkpoint: not a place for outputs
        if (path.parent / marker).exists():
            raise OutputError(f"{flag} {path} lies inside a checkpoint folder ({path.parent}); choose another folder")
    if path.is_dir():
        marker = holds_checkpoint(path)
        if marker:
            raise OutputError(f"{flag} {path} holds a checkpoint ({marker}); choose another folder")
        if any(path.iterdir()) and not overwrite:
            raise OutputError(f"{flag} {path} is not empty; choose another folder or pass --overwrite to replace it")
    return path


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yields a temporary sibling to write; it replaces `path` when the block ends without an error."""
    path = Path(path)
    partial = _partial(path)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    with atomic_file(path) as partial:
        partial.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yields a temporary sibling folder to fill; when the block ends without an error it takes `path`'s place
    (an old `path` is renamed away first and removed only once the new one is in place)."""
    path = Path(path)
    partial = _partial(path)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        replaced = path.with_name(f".{path.name}.replaced-{os.getpid()}")
        if path.exists():
            os.replace(path, replaced)
        os.replace(partial, path)
        shutil.rmtree(replaced, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def move_aside(path: Path) -> Path:
    """Renames `path` to a timestamped sibling (NAME.old-YYYYmmdd-HHMMSS[-N]); nothing is deleted. Returns it."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.old-{stamp}")
    count = 1
    while target.exists():
        count += 1
        target = path.with_name(f"{path.name}.old-{stamp}-{count}")
    os.replace(path, target)
    return target


def sha256_of(path: Path) -> str:
    """The sha256 of a file, or of a folder's files in sorted order (a shard that is a folder, in MDS)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()
