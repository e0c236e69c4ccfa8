"""LUPerson-MLLM captions: four JSON files, one per (instruction, captioner), image file name -> caption.

Dynamic captions that still hold a template slot or markup are replaced by the same image's static
caption from the same captioner, as the reference implementation does at load time (METHOD.md §1)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

DIRTY_CAPTION = re.compile(r"\[[^\]]*\]|<[^>]*>")  # "[clothing description]", "<ref>...</ref>"


class CaptionError(ValueError):
    """A caption file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class CaptionSource:
    """One caption file: `Ts-qwen.json` -> instruction "Ts" (static) or "Td" (dynamic), captioner "qwen"."""

    name: str
    path: Path

    @property
    def is_dynamic(self) -> bool:
        return self.name.startswith("Td")

    @property
    def captioner(self) -> str:
        return self.name.split("-", 1)[-1]


@dataclass
class CaptionSet:
    sources: list[CaptionSource]
    captions: dict[str, list[str | None]]  # image file name -> one caption per source (None = missing)
    dirty_replaced: list[tuple[str, str]] = field(default_factory=list)  # (source, image) replaced by static
    dirty_unreplaceable: list[tuple[str, str]] = field(default_factory=list)  # no static caption to use


def read_caption_file(path: Path) -> dict[str, str]:
    """image file name -> caption; empty captions are left out (the packer counts what is missing)."""
    if not path.is_file():
        raise CaptionError(f"caption file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CaptionError(f"caption file {path} is not UTF-8 JSON: {error}") from None
    if not isinstance(raw, dict):
        raise CaptionError(f"caption file {path} must map image names to caption strings")
    if not raw:
        raise CaptionError(f"caption file {path} holds no captions")
    # Keys may be paths (".../0001.jpg"); images are matched by file name.
    usable = {Path(key).name: text for key, text in raw.items() if isinstance(text, str) and text.strip()}
    if not usable:
        raise CaptionError(f"caption file {path} lost every caption: all {len(raw)} are empty or not strings")
    return usable


def load_captions(paths: list[str | Path]) -> CaptionSet:
    """Reads every caption file and replaces dirty dynamic captions by the matching static one."""
    sources = [CaptionSource(Path(p).stem, Path(p)) for p in paths]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise CaptionError(f"caption files must have distinct names, got {names}")
    per_source = [read_caption_file(s.path) for s in sources]
    images = sorted(set().union(*per_source))
    captions = {image: [texts.get(image) for texts in per_source] for image in images}
    caption_set = CaptionSet(sources=sources, captions=captions)
    _replace_dirty(caption_set)
    for index, source in enumerate(sources):
        if all(row[index] is None for row in captions.values()):
            raise CaptionError(f"caption file {source.path} lost every caption: all are dirty and none replaceable")
    return caption_set


def _static_fallback(sources: list[CaptionSource], row: list[str | None], dynamic: CaptionSource) -> str | None:
    same_captioner = [i for i, s in enumerate(sources) if not s.is_dynamic and s.captioner == dynamic.captioner]
    any_static = [i for i, s in enumerate(sources) if not s.is_dynamic]
    for index in same_captioner + any_static:
        if row[index] is not None and not DIRTY_CAPTION.search(row[index]):
            return row[index]
    return None


def _replace_dirty(caption_set: CaptionSet) -> None:
    for image, row in caption_set.captions.items():
        for index, source in enumerate(caption_set.sources):
            text = row[index]
            if text is None or not source.is_dynamic or not DIRTY_CAPTION.search(text):
                continue
            fallback = _static_fallback(caption_set.sources, row, source)
            if fallback is None:
                caption_set.dirty_unreplaceable.append((source.name, image))
            else:
                caption_set.dirty_replaced.append((source.name, image))
            row[index] = fallback
