"""Caption writing: the two captioner styles (Qwen-VL sentences, Shikra noun phrases) under the static
instruction, the template bank under the dynamic one, and make_caption, which adds noise and dirt on request."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from data.synthetic.attributes import PersonAttributes
from data.synthetic.noise import Dirt, NoiseRecord, draw_dirt, replace_attribute_word, word_index
from data.synthetic.pieces import Article, AttributeWord, Piece, render_pieces
from data.synthetic.templates import (
    ACCESSORY_SLOT,
    BELONGINGS_SLOT,
    CLOTHING_SLOT,
    DYNAMIC_TEMPLATES,
    FOOTWEAR_SLOT,
    HAIR_SLOT,
    PERSON_SLOT,
    SLOTS,
)

CAPTION_FILES: dict[str, tuple[str, str]] = {  # file -> (instruction, captioner), in the order written
    "Ts-qwen.json": ("static", "qwen"),
    "Ts-shikra.json": ("static", "shikra"),
    "Td-qwen.json": ("dynamic", "qwen"),
    "Td-shikra.json": ("dynamic", "shikra"),
}

SLOT_PATTERN = re.compile("(" + "|".join(re.escape(slot) for slot in SLOTS) + ")")


@dataclass(frozen=True)
class Caption:
    text: str
    noise: NoiseRecord | None  # file and image left empty until the caption is placed in a file
    dirt: Dirt | None


def _garment(attrs: PersonAttributes, part: str, *, with_article: bool) -> list[Piece]:
    """ "a red t-shirt" / "blue jeans" (part is "upper", "lower", "bag" or "accessory")."""
    colour_attribute, type_attribute = f"{part}_colour", f"{part}_type"
    words: list[Piece] = [
        AttributeWord(colour_attribute, getattr(attrs, colour_attribute)),
        " ",
        AttributeWord(type_attribute, getattr(attrs, type_attribute)),
    ]
    return [Article(noun_attribute=type_attribute), *words] if with_article else words


def _hair_phrase(attrs: PersonAttributes) -> list[Piece]:
    return [
        AttributeWord("hair_length", attrs.hair_length),
        " ",
        AttributeWord("hair_colour", attrs.hair_colour),
        " hair",
    ]


def _clothing_phrase(attrs: PersonAttributes, *, compact: bool) -> list[Piece]:
    upper = _garment(attrs, "upper", with_article=not compact)
    if attrs.lower_type is None:
        return upper
    return [*upper, ", " if compact else " and ", *_garment(attrs, "lower", with_article=not compact)]


def _footwear_phrase(attrs: PersonAttributes) -> list[Piece]:
    return [AttributeWord("shoe_colour", attrs.shoe_colour), " shoes"]


def _belongings_phrase(attrs: PersonAttributes, *, compact: bool) -> list[Piece]:
    return _garment(attrs, "bag", with_article=not compact) if attrs.bag_type else ["no bag"]


def _accessory_phrase(attrs: PersonAttributes, *, compact: bool) -> list[Piece]:
    return _garment(attrs, "accessory", with_article=not compact) if attrs.accessory_type else ["no accessories"]


def static_qwen_pieces(attrs: PersonAttributes) -> list[Piece]:
    """Qwen-VL style: full sentences with pronouns."""
    pronoun = "He" if attrs.gender == "man" else "She"
    pieces: list[Piece] = ["The ", attrs.gender, " has ", *_hair_phrase(attrs), ". "]
    pieces += [
        pronoun,
        " is wearing ",
        *_clothing_phrase(attrs, compact=False),
        ", with ",
        *_footwear_phrase(attrs),
        ".",
    ]
    if attrs.bag_type:
        pieces += [" ", pronoun, " is carrying ", *_belongings_phrase(attrs, compact=False), "."]
    else:
        pieces += [" ", pronoun, " is not carrying a bag."]
    if attrs.accessory_type:
        pieces += [" ", pronoun, " also wears ", *_accessory_phrase(attrs, compact=False), "."]
    return pieces


def static_shikra_pieces(attrs: PersonAttributes) -> list[Piece]:
    """Shikra style: one compact lower-case noun phrase."""
    pieces: list[Piece] = [Article(), attrs.gender, " with ", *_hair_phrase(attrs), " in "]
    pieces += [*_clothing_phrase(attrs, compact=True), " and ", *_footwear_phrase(attrs)]
    if attrs.bag_type:
        pieces += [", ", *_belongings_phrase(attrs, compact=True)]
    if attrs.accessory_type:
        pieces += [", ", *_accessory_phrase(attrs, compact=True)]
    return pieces


def slot_fillers(attrs: PersonAttributes, captioner: str) -> dict[str, list[Piece]]:
    """What each template slot becomes; Shikra fills them more tersely (no articles)."""
    compact = captioner == "shikra"
    return {
        PERSON_SLOT: [attrs.gender],
        HAIR_SLOT: _hair_phrase(attrs),
        CLOTHING_SLOT: _clothing_phrase(attrs, compact=compact),
        FOOTWEAR_SLOT: _footwear_phrase(attrs),
        BELONGINGS_SLOT: _belongings_phrase(attrs, compact=compact),
        ACCESSORY_SLOT: _accessory_phrase(attrs, compact=compact),
    }


def fill_template(template: str, fillers: dict[str, list[Piece]], *, dirt: Dirt | None = None) -> list[Piece]:
    """The template with its slots filled; a "slot" dirt leaves its slot literal, a "markup" dirt replaces the
    first person noun by its marker."""
    pieces: list[Piece] = []
    person_marked = False
    for part in SLOT_PATTERN.split(template):
        if part not in fillers:
            if part:
                pieces.append(part)
        elif dirt is not None and dirt.kind == "slot" and part == dirt.marker:
            pieces.append(part)
        elif dirt is not None and dirt.kind == "markup" and part == PERSON_SLOT and not person_marked:
            pieces.append(dirt.marker)
            person_marked = True
        else:
            pieces.extend(fillers[part])
    return pieces


def make_caption(
    attrs: PersonAttributes,
    *,
    instruction: str,
    captioner: str,
    rng: np.random.Generator,
    noise_fraction: float = 0.0,
    dirty_fraction: float = 0.0,
) -> Caption:
    """One caption in the given (instruction, captioner) style; with probability noise_fraction it holds one wrong
    attribute word, and (dynamic only) with probability dirty_fraction an unfilled slot or markup."""
    dirt = None
    if instruction == "static":
        pieces = static_qwen_pieces(attrs) if captioner == "qwen" else static_shikra_pieces(attrs)
    else:
        template = DYNAMIC_TEMPLATES[int(rng.integers(len(DYNAMIC_TEMPLATES)))]
        if rng.random() < dirty_fraction:
            dirt = draw_dirt(template, attrs, rng)
        pieces = fill_template(template, slot_fillers(attrs, captioner), dirt=dirt)
    original = pieces
    replaced = replace_attribute_word(pieces, rng) if rng.random() < noise_fraction else None
    if replaced is not None:
        pieces = replaced[0]
    text, spans = render_pieces(pieces)
    noise = None
    if replaced is not None:
        index = replaced[1]
        start, end = spans[index]
        noise = NoiseRecord(
            file="",
            image="",
            word_index=word_index(text, start),
            char_start=start,
            char_end=end,
            wrong=pieces[index].value,
            correct=original[index].value,
            attribute=pieces[index].attribute,
            num_words=len(pieces[index].value.split()),
        )
    return Caption(text=text, noise=noise, dirt=dirt)
