"""What makes a caption imperfect, as MLLM captions are: one wrong attribute word (what NAM should find) or, in
dynamic captions, dirt: a template slot left unfilled or grounding markup around the person noun."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from data.synthetic.attributes import ATTRIBUTE_VOCABULARY, PersonAttributes, pick, pick_other
from data.synthetic.pieces import AttributeWord, Piece
from data.synthetic.templates import MARKUP_PATTERNS, PERSON_SLOT, SLOTS

DIRTY_PATTERN = re.compile(r"\[[^\[\]]* description\]|\[person/woman/man\]|<[^<>]+>")


@dataclass(frozen=True)
class NoiseRecord:
    """One wrong attribute word in a written caption. word_index indexes caption.split() (punctuation stays
    attached to its word) at the wrong value's first word; num_words > 1 only for "shoulder bag"."""

    file: str
    image: str
    word_index: int
    char_start: int
    char_end: int
    wrong: str
    correct: str
    attribute: str
    num_words: int


@dataclass(frozen=True)
class Dirt:
    kind: str  # "slot": a template slot left unfilled; "markup": <...> grounding tags around the person noun
    marker: str  # the literal text left in the caption


def draw_dirt(template: str, attrs: PersonAttributes, rng: np.random.Generator) -> Dirt:
    if rng.random() < 2 / 3:
        unfilled = [slot for slot in SLOTS if slot != PERSON_SLOT and slot in template]
        return Dirt("slot", pick(rng, unfilled))
    pattern = pick(rng, MARKUP_PATTERNS)
    x0, y0 = rng.integers(0, 300, size=2)
    x1, y1 = rng.integers(700, 1000, size=2)
    return Dirt("markup", pattern.format(person=attrs.gender, box=f"({x0},{y0}),({x1},{y1})"))


def replace_attribute_word(pieces: list[Piece], rng: np.random.Generator) -> tuple[list[Piece], int] | None:
    """The pieces with one attribute word swapped for a wrong value of the same kind, and that piece's index."""
    candidates = [index for index, piece in enumerate(pieces) if isinstance(piece, AttributeWord)]
    if not candidates:
        return None
    index = candidates[int(rng.integers(len(candidates)))]
    word = pieces[index]
    wrong = pick_other(rng, ATTRIBUTE_VOCABULARY[word.attribute], word.value)
    return [*pieces[:index], AttributeWord(word.attribute, wrong), *pieces[index + 1 :]], index


def word_index(text: str, char_start: int) -> int:
    """Index in text.split() of the word holding char_start."""
    before = text[:char_start]
    words_before = len(before.split())
    starts_new_word = not before or before[-1].isspace()
    return words_before if starts_new_word else words_before - 1


def is_dirty(caption: str) -> bool:
    """True for a caption holding a template slot or <...> markup (what data.pack's same_captioner rule replaces;
    the reference rule replaces only those with `description]` or `<`, docs/method.md)."""
    return DIRTY_PATTERN.search(caption) is not None
