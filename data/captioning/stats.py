"""How diverse are the captions of a caption file? Static against dynamic TDE captions, as in the paper's Fig. 1.

    python -m data.captioning.stats Ts-qwen.json Td-qwen.json [--json]

Per file, over all its captions (words: lowercased letters, digits and apostrophes; sentences: split at . ! ?):
- distinct-n, n = 1..4: distinct n-grams / all n-grams, n-grams taken within each caption;
- the top sentence openings (the first 3 words of each sentence) and the share of sentences each opens;
- the entropy in bits of the sentence patterns: a sentence's pattern keeps its function words (articles,
  pronouns, prepositions, conjunctions, auxiliaries) and turns each run of other words into "_", so
  "The man is wearing a black coat." -> "the _ is _ a _". One fixed phrasing gives 0 bits; k equally
  frequent patterns give log2(k)."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from data.caption_files import CaptionError, read_caption_file
from data.cli_errors import error_boundary

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
SENTENCE_END = re.compile(r"[.!?]+")
OPENING_WORDS = 3
TOP_OPENINGS = 3
# Closed-class words: they carry a sentence's syntax, not its content.
_FUNCTION_WORDS = """a an the this that these those some any each both his her its their my your our he she it they him them
    who whom which whose what there here and or but nor so yet if while as than with without in on at of to from
    by for over under into onto upon near beside behind around across along through between above below about
    is are was were be been being am has have had having do does did can could will would may might must should
    also not no too very"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())


@dataclass(frozen=True)
class CaptionFileStats:
    file: str
    captions: int
    distinct: dict[int, float]  # n -> distinct n-grams / all n-grams
    sentences: int
    top_openings: list[tuple[str, float]]  # (first words, share of sentences), most frequent first
    pattern_entropy_bits: float
    distinct_patterns: int


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def sentence_pattern(sentence_words: list[str]) -> str:
    pattern: list[str] = []
    for word in sentence_words:
        token = word if word in FUNCTION_WORDS else "_"
        if not (token == "_" and pattern and pattern[-1] == "_"):
            pattern.append(token)
    return " ".join(pattern)


def entropy_bits(counts: Counter) -> float:
    total = sum(counts.values())
    return sum(-c / total * math.log2(c / total) for c in counts.values()) if total else 0.0  # sum from +0: no -0.0


def caption_stats(name: str, captions: list[str]) -> CaptionFileStats:
    tokenised = [words(text) for text in captions]
    distinct = {}
    for n in range(1, 5):
        ngrams = [tuple(w[i : i + n]) for w in tokenised for i in range(len(w) - n + 1)]
        distinct[n] = len(set(ngrams)) / len(ngrams) if ngrams else 0.0
    sentences = [w for text in captions for part in SENTENCE_END.split(text) if (w := words(part))]
    openings = Counter(" ".join(s[:OPENING_WORDS]) for s in sentences)
    patterns = Counter(sentence_pattern(s) for s in sentences)
    return CaptionFileStats(
        file=name,
        captions=len(captions),
        distinct=distinct,
        sentences=len(sentences),
        top_openings=[(text, count / len(sentences)) for text, count in openings.most_common(TOP_OPENINGS)],
        pattern_entropy_bits=entropy_bits(patterns),
        distinct_patterns=len(patterns),
    )


def format_table(rows: list[CaptionFileStats]) -> str:
    width = max(len("file"), *(len(r.file) for r in rows))
    header = f"{'file':<{width}}  captions  dist-1  dist-2  dist-3  dist-4  top opening  patterns  entropy (bits)"
    lines = [header]
    for r in rows:
        top = r.top_openings[0][1] if r.top_openings else 0.0
        lines.append(
            f"{r.file:<{width}}  {r.captions:>8}  "
            + "  ".join(f"{r.distinct[n]:>6.3f}" for n in range(1, 5))
            + f"  {top:>11.1%}  {r.distinct_patterns:>8}  {r.pattern_entropy_bits:>14.2f}"
        )
    lines.append("")
    for r in rows:
        openings = ", ".join(f'"{text}" {share:.1%}' for text, share in r.top_openings)
        lines.append(f"{r.file}: {r.sentences} sentences; most frequent openings: {openings}")
    return "\n".join(lines)


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.captioning.stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", type=Path, nargs="+", help="caption JSON files (image name -> caption)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file instead of a table")
    args = parser.parse_args(argv)
    try:
        rows = [caption_stats(path.name, list(read_caption_file(path).values())) for path in args.files]
    except CaptionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print("\n".join(json.dumps(asdict(row)) for row in rows))
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
