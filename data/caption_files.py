"""LUPerson-MLLM captions: four JSON files, one per (instruction, captioner), image file name -> caption.

Dirty captions (an unfilled template slot, markup) are replaced when packing, by one of two rules
(docs/method.md, "Captions"):
- `reference` (the default): every caption is checked for `description]` or `<`, as the authors' loader does, and a
  dirty one becomes a random choice (seeded) between the image's clean static captions;
- `same_captioner`: only dynamic captions are checked, for any `[...]` slot or `<...>` markup, and a dirty one
  becomes the static caption of the same captioner (any clean static caption if that one is missing or dirty)."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

DIRTY_CAPTION = re.compile(r"\[[^\]]*\]|<[^>]*>")  # "[clothing description]", "<ref>...</ref>"
DIRTY_RULES = ("reference", "same_captioner")


def is_dirty(text: str, rule: str) -> bool:
    """The reference's test is two substrings; the other rule's is the bracket/markup pattern."""
    if rule == "reference":
        return "description]" in text or "<" in text
    return DIRTY_CAPTION.search(text) is not None


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
    dirty_rule: str = "reference"

    def counts_per_source(self, pairs: list[tuple[str, str]]) -> dict[str, int]:
        """{source name: how many of `pairs` are its}, every source listed."""
        counts = {source.name: 0 for source in self.sources}
        for source, _ in pairs:
            counts[source] += 1
        return counts


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


def load_captions(paths: list[str | Path], *, dirty_rule: str = "reference", seed: int = 0) -> CaptionSet:
    """Reads every caption file and replaces dirty captions by `dirty_rule` (random draws seeded by `seed`)."""
    if dirty_rule not in DIRTY_RULES:
        raise CaptionError(f"the dirty-caption rule must be one of {', '.join(DIRTY_RULES)} (got {dirty_rule!r})")
    sources = [CaptionSource(Path(p).stem, Path(p)) for p in paths]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise CaptionError(f"caption files must have distinct names, got {names}")
    per_source = [read_caption_file(s.path) for s in sources]
    images = sorted(set().union(*per_source))
    captions = {image: [texts.get(image) for texts in per_source] for image in images}
    caption_set = CaptionSet(sources=sources, captions=captions, dirty_rule=dirty_rule)
    if dirty_rule == "reference":
        _replace_dirty_as_reference(caption_set, random.Random(seed))
    else:
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


def _replace_dirty_as_reference(caption_set: CaptionSet, rng: random.Random) -> None:
    """All four captions checked; a dirty one -> a random clean static caption of the image. The authors' loader draws
    between both static captions even when the drawn one is itself dirty; here only clean ones are drawn, and a
    caption with no clean static caption to take is dropped and counted (docs/method.md)."""
    static = [i for i, s in enumerate(caption_set.sources) if not s.is_dynamic]
    for image, row in caption_set.captions.items():  # sorted by image name: the draws are reproducible
        original = list(row)
        clean_static = [
            original[i] for i in static if original[i] is not None and not is_dirty(original[i], "reference")
        ]
        for index, source in enumerate(caption_set.sources):
            text = original[index]
            if text is None or not is_dirty(text, "reference"):
                continue
            if clean_static:
                row[index] = rng.choice(clean_static)
                caption_set.dirty_replaced.append((source.name, image))
            else:
                row[index] = None
                caption_set.dirty_unreplaceable.append((source.name, image))
