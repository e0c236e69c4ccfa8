"""The resumable output of one captioning run (one instruction × one model), beside OUT = e.g. Td-qwen2vl.json:

    Td-qwen2vl.parts/run.json                 the settings; a resumed run must match them
    Td-qwen2vl.parts/rank00000.jsonl          captions as they finish: {image, caption, template, dirty}
    Td-qwen2vl.parts/rank00000.failures.jsonl failed images: {image, template, stage, reason}
    Td-qwen2vl.parts/rank00000-of-00002.done  written when the rank has gone through all its images
    Td-qwen2vl.json                           the merge: image file name -> caption (docs/method.md)
    Td-qwen2vl.log.jsonl                      the merge: {image, template, dirty} per captioned image
    Td-qwen2vl.failures.jsonl                 the merge: images still failing, with the last reason

Each rank appends only to its own files, a whole line per caption, flushed and fsynced after each batch. A run
killed mid-write leaves at most one torn last line, which is cut off before the next run appends. An image is
done when any part file holds its caption, whatever world size wrote it; the merge keeps one caption per image."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from data.captioning.instructions import CaptioningError
from data.outputs import move_aside, write_text_atomically

log = logging.getLogger(__name__)
SETTINGS = "run.json"


@dataclass
class PartsState:
    captions: dict[str, dict] = field(default_factory=dict)  # image -> its first caption row
    failures: dict[str, dict] = field(default_factory=dict)  # image -> its last failure row, if never captioned


@dataclass(frozen=True)
class MergeSummary:
    out: Path
    captions: int
    flagged: int  # captions that still hold a [slot] or <markup>
    failed: int


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):  # the last line may be torn by a kill; anything else is damage
                log.warning("skipping unreadable line %d of %s", number, path)
    return rows


class RankWriter:
    """Appends one rank's captions and failures; each `write` is durable when it returns."""

    def __init__(self, captions: Path, failures: Path):
        self.handles = {}
        for kind, path in (("captions", captions), ("failures", failures)):
            _cut_torn_tail(path)
            self.handles[kind] = path.open("a", encoding="utf-8")

    def write(self, captions: list[dict], failures: list[dict]) -> None:
        for kind, rows in (("captions", captions), ("failures", failures)):
            if rows:
                handle = self.handles[kind]
                handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
                handle.flush()
                os.fsync(handle.fileno())

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def _cut_torn_tail(path: Path) -> None:
    """A kill during a write can leave a last line without its newline; the next append must not extend it."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


class CaptionStore:
    """OUT and its side files. Only files this tool wrote are ever resumed or replaced: an existing OUT (or its log
    or failures file) without `OUT.parts/run.json` beside it, such as a caption file of a public release, is
    refused before any work."""

    def __init__(self, out: Path):
        out = Path(out)
        if out.suffix != ".json":
            raise CaptioningError(f"--out must name a .json caption file (got {out})")
        self.out = out
        self.parts = out.with_suffix(".parts")
        self.log = out.with_suffix(".log.jsonl")
        self.failures = out.with_suffix(".failures.jsonl")
        self._check_owned()

    def _check_owned(self) -> None:
        if not self.out.parent.is_dir():
            raise CaptioningError(f"--out {self.out}: its folder {self.out.parent} does not exist")
        ours = (self.parts / SETTINGS).is_file()
        for path in (self.out, self.log, self.failures, self.parts):
            if path.is_dir() != (path == self.parts) and path.exists():
                raise CaptioningError(
                    f"--out {self.out}: {path} is in the way (a {'folder' if path.is_dir() else 'file'})"
                )
            if path != self.parts and path.exists() and not ours:
                raise CaptioningError(
                    f"--out {self.out}: {path} exists and was not written by python -m data.captioning (no "
                    f"{self.parts / SETTINGS} beside it); it is left as it is: choose another --out"
                )

    def check_settings(self, settings: dict) -> None:
        """The first run records its settings; a resumed run with other ones would mix two kinds of caption."""
        self.parts.mkdir(parents=True, exist_ok=True)
        path = self.parts / SETTINGS
        if path.is_file():
            try:
                recorded = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                recorded = {"unreadable": str(error)}
            recorded = recorded if isinstance(recorded, dict) else {"unreadable": repr(recorded)}
            changed = sorted(k for k in settings.keys() | recorded.keys() if settings.get(k) != recorded.get(k))
            if changed and not self._pins_settings():
                write_text_atomically(path, json.dumps(settings, indent=1) + "\n")
            elif changed:
                key = changed[0]
                captioned = len(self.finished_names()[0])
                raise CaptioningError(
                    f"{self.parts} was made with {key}={recorded.get(key)!r}, this run has {settings.get(key)!r} "
                    f"(differing: {', '.join(changed)}); rerun with the same settings, choose another --out, or move "
                    f"{self.parts} away to start over (it holds {captioned} captions)"
                )
        else:
            write_text_atomically(path, json.dumps(settings, indent=1) + "\n")

    def _pins_settings(self) -> bool:
        """A run that produced no caption pins nothing: its settings are replaced, and its failures (if any),
        which the new settings may not repeat, are moved aside with it, to PARTS.old-<time>."""
        captioned, failed = self.finished_names()
        if captioned:
            return True
        if failed:
            moved = move_aside(self.parts)
            log.warning("%s produced no caption; its failures were moved to %s", self.parts, moved)
            print(f"note: {self.parts} held no caption, only failures; moved it to {moved}", file=sys.stderr)
            self.parts.mkdir(parents=True, exist_ok=True)
        return False

    def writer(self, rank: int) -> RankWriter:
        self.parts.mkdir(parents=True, exist_ok=True)
        return RankWriter(self.parts / f"rank{rank:05d}.jsonl", self.parts / f"rank{rank:05d}.failures.jsonl")

    def _rows(self, kind: str):
        """Every row of every rank's captions ("captions") or failures ("failures") files, in file order."""
        for path in sorted(self.parts.glob("rank*.jsonl")) if self.parts.is_dir() else []:
            if path.name.endswith(".failures.jsonl") == (kind == "failures"):
                yield from _read_jsonl(path)

    def read(self) -> PartsState:
        state = PartsState()
        for row in self._rows("captions"):
            state.captions.setdefault(row["image"], row)
        for row in self._rows("failures"):
            if row["image"] not in state.captions:
                state.failures[row["image"]] = row
        return state

    def finished_names(self) -> tuple[set[str], set[str]]:
        """(captioned, failed and never captioned): what a resumed run skips; names only, to stay small at 1 M images."""
        captioned = {row["image"] for row in self._rows("captions")}
        failed = {row["image"] for row in self._rows("failures")} - captioned
        return captioned, failed

    def _done_marker(self, rank: int, world_size: int) -> Path:
        return self.parts / f"rank{rank:05d}-of-{world_size:05d}.done"

    def clear_done(self, rank: int) -> None:
        for marker in self.parts.glob(f"rank{rank:05d}-of-*.done"):
            marker.unlink(missing_ok=True)

    def mark_done(self, rank: int, world_size: int) -> None:
        self._done_marker(rank, world_size).touch()

    def all_done(self, world_size: int) -> bool:
        return all(self._done_marker(rank, world_size).is_file() for rank in range(world_size))

    def merge(self) -> MergeSummary:
        """Writes OUT, its log and its failures from the part files as they are now; each file atomically."""
        if not self.parts.is_dir():
            raise CaptioningError(
                f"nothing to merge: {self.parts} does not exist (no captioning run wrote to {self.out})"
            )
        state = self.read()
        names = sorted(state.captions)
        captions = {name: state.captions[name]["caption"] for name in names}
        log_rows = [
            {"image": name, "template": state.captions[name].get("template"), "dirty": state.captions[name]["dirty"]}
            for name in names
        ]
        failures = [state.failures[name] for name in sorted(state.failures)]
        write_text_atomically(self.out, json.dumps(captions, ensure_ascii=False, indent=1) + "\n")
        write_text_atomically(self.log, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in log_rows))
        write_text_atomically(self.failures, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in failures))
        flagged = sum(row["dirty"] for row in log_rows)
        return MergeSummary(self.out, captions=len(captions), flagged=flagged, failed=len(failures))
