"""The TDE instructions (docs/method.md): a static instruction, a dynamic one that carries a sentence template, and
the template bank, read from a YAML file the user can replace (configs/captioning/tde_instructions.yaml).

Each image's template is a function of (seed, image file name) alone, so a rerun, a resumed run and any split
over ranks choose the same template for the same image."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from data.caption_files import DIRTY_CAPTION

DEFAULT_INSTRUCTIONS = Path(__file__).resolve().parents[2] / "configs" / "captioning" / "tde_instructions.yaml"
TEMPLATE_FIELD = "{template}"
MODES = ("static", "dynamic")


class CaptioningError(ValueError):
    """A user mistake in a captioning run (bad path, config or settings); the message is one line for people."""


@dataclass(frozen=True)
class Instructions:
    static: str  # the static instruction, sent as is
    dynamic: str  # the dynamic instruction; "{template}" is replaced by the image's template
    templates: tuple[str, ...]  # sentence patterns with [slot] placeholders, one drawn per image

    def __post_init__(self):
        if not isinstance(self.static, str) or not self.static.strip():
            raise CaptioningError("instructions.static must be a non-empty string")
        if not isinstance(self.dynamic, str) or self.dynamic.count(TEMPLATE_FIELD) != 1:
            raise CaptioningError(f"instructions.dynamic must hold {TEMPLATE_FIELD} exactly once")
        if not self.templates or not all(isinstance(t, str) and t.strip() for t in self.templates):
            raise CaptioningError("instructions.templates must be a non-empty list of non-empty strings")
        without_slot = [i for i, t in enumerate(self.templates) if not DIRTY_CAPTION.search(t)]
        if without_slot:
            raise CaptioningError(f"instructions.templates[{without_slot[0]}] has no [slot]; a template needs one")

    @property
    def sha256(self) -> str:
        """Identifies the wording, so a resumed run can refuse to mix captions made with other instructions."""
        text = "\x00".join([self.static, self.dynamic, *self.templates])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def template_id(self, image: str, seed: int) -> int:
        """The image's template index: a hash of (seed, file name), independent of order, batch and rank."""
        digest = hashlib.blake2b(f"{seed}\x00{image}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % len(self.templates)

    def prompt(self, mode: str, template_id: int | None) -> str:
        if mode == "static":
            return self.static
        return self.dynamic.replace(TEMPLATE_FIELD, self.templates[template_id])


def load_instructions(path: str | Path = DEFAULT_INSTRUCTIONS) -> Instructions:
    path = Path(path)
    if not path.is_file():
        raise CaptioningError(f"instructions file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise CaptioningError(f"instructions file {path} is not valid YAML: {problem}{where}") from None
    known = {f.name for f in fields(Instructions)}
    if not isinstance(raw, dict) or set(raw) != known:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise CaptioningError(f"instructions file {path} must have exactly the keys {sorted(known)} (found {found})")
    if not isinstance(raw["templates"], list):
        raise CaptioningError(f"instructions.templates in {path} must be a list of strings")
    return Instructions(static=raw["static"], dynamic=raw["dynamic"], templates=tuple(raw["templates"]))
