"""A caption as a list of pieces: plain text, attribute words (what noise replaces) and articles that agree with
whatever word follows them once the caption is rendered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from data.synthetic.attributes import PLURAL_NOUNS


@dataclass(frozen=True)
class AttributeWord:
    """An attribute value as a caption writes it: the unit that noise injection replaces."""

    attribute: str
    value: str


@dataclass(frozen=True)
class Article:
    """'a ', 'an ' or nothing, decided when the caption is rendered, so that a replaced word stays grammatical
    ("an orange coat", "blue jeans"). `noun_attribute` names the AttributeWord whose number decides it."""

    capital: bool = False
    noun_attribute: str | None = None


Piece = str | AttributeWord | Article


def render_pieces(pieces: Sequence[Piece]) -> tuple[str, list[tuple[int, int]]]:
    """The caption text and, per piece, its (start, end) character span."""
    texts = [""] * len(pieces)
    next_initial = ""
    for index in reversed(range(len(pieces))):  # right to left: an article looks at what follows it
        piece = pieces[index]
        if isinstance(piece, Article):
            texts[index] = _article_text(piece, pieces[index + 1 :], next_initial)
        else:
            texts[index] = piece.value if isinstance(piece, AttributeWord) else piece
        if texts[index].strip():
            next_initial = texts[index].lstrip()[0]
    spans, start = [], 0
    for text in texts:
        spans.append((start, start + len(text)))
        start += len(text)
    return "".join(texts), spans


def _article_text(article: Article, following: Sequence[Piece], next_initial: str) -> str:
    if article.noun_attribute is not None:
        noun = next(p for p in following if isinstance(p, AttributeWord) and p.attribute == article.noun_attribute)
        if noun.value in PLURAL_NOUNS:
            return ""
    word = "an" if next_initial.lower() in ("a", "e", "i", "o", "u") else "a"
    return (word.capitalize() if article.capital else word) + " "
