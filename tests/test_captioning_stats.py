"""`python -m data.captioning.stats` on hand-made caption files, against values worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from data.captioning.stats import caption_stats, main, sentence_pattern, words


def test_hand_computed_values():
    # words: [a man in red] and [a man in blue he walks]; sentences: "a man in red", "a man in blue", "he walks"
    stats = caption_stats("f.json", ["A man in red.", "A man in blue. He walks!"])
    assert stats.captions == 2 and stats.sentences == 3
    # 1-grams: 7 distinct of 10; 2-grams: 6 of 3 + 5; 3-grams: 5 of 2 + 4; 4-grams: 4 of 1 + 3
    assert stats.distinct == pytest.approx({1: 7 / 10, 2: 6 / 8, 3: 5 / 6, 4: 4 / 4})
    assert stats.top_openings == [("a man in", pytest.approx(2 / 3)), ("he walks", pytest.approx(1 / 3))]
    # patterns "a _ in _" twice and "he _" once
    assert stats.distinct_patterns == 2
    assert stats.pattern_entropy_bits == pytest.approx(-(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3))


def test_one_phrasing_has_zero_bits_and_k_equal_phrasings_log2_k():
    assert caption_stats("s", ["A man in red.", "A woman in blue."]).pattern_entropy_bits == 0.0
    four = ["A man in red.", "He wears red.", "Red coat on a man.", "There is a man."]
    assert caption_stats("d", four).pattern_entropy_bits == pytest.approx(2.0)


def test_words_and_patterns():
    assert words("The man's BAG, 2 shoes.") == ["the", "man's", "bag", "2", "shoes"]
    assert sentence_pattern(words("The man is wearing a black coat")) == "the _ is _ a _"
    assert sentence_pattern(words("Black hair and a red coat")) == "_ and a _"


def test_the_command_prints_a_table_and_json_per_file(tmp_path: Path, capsys):
    static, dynamic = tmp_path / "Ts-m.json", tmp_path / "Td-m.json"
    static.write_text(json.dumps({"1.jpg": "A man in red.", "2.jpg": "A woman in blue."}))
    dynamic.write_text(json.dumps({"1.jpg": "He wears red.", "2.jpg": "There is a woman.", "3.jpg": " "}))
    assert main([str(static), str(dynamic)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("file") and table[1].startswith("Ts-m.json") and table[2].startswith("Td-m.json")
    assert main(["--json", str(static), str(dynamic)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["file"], r["captions"], r["pattern_entropy_bits"]) for r in rows] == [
        ("Ts-m.json", 2, 0.0),
        ("Td-m.json", 2, 1.0),  # the blank caption is not a caption
    ]


def test_a_bad_file_gives_one_line(tmp_path: Path, capsys):
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main([str(tmp_path / "bad.json")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and "bad.json" in error[0]
