"""The one output policy of every command that writes: outputs are checked before any work, never replace what the
command did not write, and are written beside the target and renamed over it.

- A command declares its output flags with `output_argument(parser, "--out", kind="file" | "folder")`, so that
  the flags can be found (tests/test_output_policy.py walks every CLI's parser and tries each one).
- It checks them first (`check_output_file`, `check_output_folder`), so that a mistyped path fails in one line
  before hours of work, not after: an existing output only with --overwrite, never the command's own input or a
  path inside it (`protect`), never a checkpoint, and never a folder that another tool wrote (`tool`: each folder a
  tool writes carries an `OWNER_FILE` naming it).
- It then writes to a hidden temporary sibling and renames it over the target only when the output is complete
  (`atomic_file`, `atomic_folder`): a failure leaves the old output as it was, and a reader never sees half a
  file. A replaced folder is replaced whole, never file by file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

# Files that mark a folder as a training checkpoint, a run folder or a checkpoints folder: never an output target.
CHECKPOINT_MARKERS = ("train_state.json", "model_config.json", "latest", "checkpoints", "mp_rank_00_model_states.pt")


OWNER_FILE = ".written-by"  # in every folder a tool writes: {"tool": "python -m ..."}
# file: one file; folder: one folder replaced whole; subfolders: a folder that gets named sub-folders, each replaced
# whole, beside whatever else it holds.
OUTPUT_KINDS = ("file", "folder", "subfolders")


class OutputError(ValueError):
    """An output path that cannot or must not be written; the message names it and the flag."""


def output_argument(
    parser: argparse.ArgumentParser, flag: str, *, kind: str, subfolders: tuple[str, ...] = (), **options
) -> argparse.Action:
    """Adds an output flag (a Path) and marks it with its kind (and, for "subfolders", their names), so that tests
    find every output of every CLI."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind must be one of {OUTPUT_KINDS} (got {kind!r})")
    if (kind == "subfolders") != bool(subfolders):
        raise ValueError("subfolders names the sub-folders of a 'subfolders' output, and only of one")
    action = parser.add_argument(flag, **({"type": Path} | options))  # a CLI may parse URLs too (data.pack)
    action.output_kind = kind
    action.output_subfolders = tuple(subfolders)
    return action


def _overlap(path: Path, source: Path) -> bool:
    """`path` is `source`, lies inside it, or holds it (resolved, so links and `..` do not hide it)."""
    resolved, source = Path(path).resolve(), Path(source).resolve()
    return resolved == source or source in resolved.parents or resolved in source.parents


def _replaces_input(path: Path, source: Path) -> bool:
    """Writing the file `path` would replace `source` or an existing file inside the folder `source`."""
    resolved, source = Path(path).resolve(), Path(source).resolve()
    return resolved == source or (source in resolved.parents and resolved.exists())


def check_output_file(path: Path, *, flag: str, overwrite: bool = False, protect: list[Path] = ()) -> Path:
    """A file path whose folder exists and which is not a folder, not one of `protect` (the command's inputs) nor
    inside one, and (without `overwrite`) not an existing file."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; name a file")
    if not path.parent.is_dir():
        raise OutputError(f"{flag} {path}: its folder {path.parent} does not exist")
    for source in protect:  # a new file beside the input is fine; replacing the input or a file of it is not
        if source is not None and _replaces_input(path, source):
            raise OutputError(f"{flag} {path} would write onto the command's input {source}; choose another path")
    if path.exists() and not overwrite:
        raise OutputError(f"{flag} {path} already exists; choose another name, or pass --overwrite to replace it")
    return path


def folder_owner(folder: Path) -> str | None:
    """The tool named by `folder`'s OWNER_FILE, or None when the folder has none (or it cannot be read)."""
    try:
        return str(json.loads((Path(folder) / OWNER_FILE).read_text(encoding="utf-8"))["tool"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def claim_folder(folder: Path, tool: str) -> None:
    """Marks `folder` as `tool`'s output (before it is renamed into place)."""
    write_text_atomically(Path(folder) / OWNER_FILE, json.dumps({"tool": tool}) + "\n")


def holds_checkpoint(folder: Path) -> str | None:
    """The marker file that makes `folder` a checkpoint or run folder, or None."""
    for marker in CHECKPOINT_MARKERS:
        if (folder / marker).exists():
            return marker
    return None


def check_output_folder(
    path: Path, *, flag: str, overwrite: bool = False, protect: list[Path] = (), tool: str | None = None
) -> Path:
    """A folder to create, or an empty one; an existing non-empty one only with `overwrite`, and never a folder
    that holds a checkpoint, another tool's output (when `tool` names this one), or overlaps one of `protect` (the
    inputs of the command)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is an existing file; name a folder")
    if not path.parent.is_dir():
        raise OutputError(f"{flag} {path}: its folder {path.parent} does not exist")
    for source in protect:
        if source is not None and _overlap(path, source):
            raise OutputError(f"{flag} {path} overlaps the input {Path(source).resolve()}; choose a folder outside it")
    for marker in ("latest", "train_state.json"):  # a checkpoints folder or a checkpoint: not a place for outputs
        if (path.parent / marker).exists():
            raise OutputError(f"{flag} {path} lies inside a checkpoint folder ({path.parent}); choose another folder")
    if path.is_dir():
        marker = holds_checkpoint(path)
        if marker:
            raise OutputError(f"{flag} {path} holds a checkpoint ({marker}); choose another folder")
        owner = folder_owner(path)
        if tool is not None and owner is not None and owner != tool:
            raise OutputError(f"{flag} {path} holds the output of `{owner}`; choose another folder")
        if any(path.iterdir()) and not overwrite:
            raise OutputError(f"{flag} {path} is not empty; choose another folder or pass --overwrite to replace it")
    return path


def check_output_subfolders(
    path: Path, names: list[str], *, flag: str, overwrite: bool = False, tool: str | None = None
) -> list[Path]:
    """`path` is a folder (or a new one in an existing folder) that gets the sub-folders `names`; each is checked as
    an output folder of its own, so other files in `path` are never touched."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is an existing file; name a folder")
    if not path.exists() and not path.parent.is_dir():
        raise OutputError(f"{flag} {path}: its folder {path.parent} does not exist")
    if path.is_dir() and (marker := holds_checkpoint(path)):
        raise OutputError(f"{flag} {path} holds a checkpoint ({marker}); choose another folder")
    if path.is_dir() and (owner := folder_owner(path)) is not None and owner != tool:
        raise OutputError(f"{flag} {path} holds the output of `{owner}`; choose another folder")
    targets = [path / name for name in names]
    if path.is_dir():
        for target in targets:
            check_output_folder(target, flag=flag, overwrite=overwrite, tool=tool)
    return targets


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
def atomic_folder(path: Path, *, tool: str | None = None) -> Iterator[Path]:
    """Yields a temporary sibling folder to fill; when the block ends without an error it takes `path`'s place
    whole (an old `path` is renamed away first and removed only once the new one is in place). With `tool`, the new
    folder is marked as that tool's output."""
    path = Path(path)
    partial = _partial(path)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        if tool is not None:
            claim_folder(partial, tool)
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
