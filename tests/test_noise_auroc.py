"""The noise AUROC evaluation: the AUROC itself, word-to-token alignment, attribute words, and the CLI end to end."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from data.caption_files import DIRTY_CAPTION
from data.synthetic import CAPTION_FILES
from data.tokenizer import CaptionTokenizer
from engine.model import build_model
from engine.runtime.checkpoint import export_model
from eval.analysis.noise_auroc import (
    NoiseAurocError,
    attribute_spans,
    auroc,
    main,
    select_captions,
    word_token_spans,
)
from tests.helpers import tiny_model_config

GROUP_KEYS = {"wrong", "correct", "auroc", "mean_noise"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from data.synthetic import generate

    root = tmp_path_factory.mktemp("noise_auroc")
    generate(root, seed=3, train_images=24, test_identities=4, progress=False)
    return root / "luperson_mllm"


def _export(out: Path, context_length: int) -> Path:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(image_size=(64, 32), context_length=context_length), tap_layer=1)
    export_model(model, out, model.cfg, tap_layer=1)
    return out


@pytest.mark.parametrize(
    ("positive", "negative", "expected"),
    [
        ([0.9, 0.8], [0.1, 0.2, 0.3], 1.0),  # perfect separation
        ([0.1, 0.2], [0.8, 0.9, 0.7], 0.0),  # reversed
        ([0.5, 0.5], [0.5, 0.5, 0.5], 0.5),  # all ties
        # pairs (p, n): (0.3, 0.1) win, (0.3, 0.3) tie, (0.3, 0.5) loss, (0.6, *) 3 wins -> (4 + 0.5) / 6
        ([0.3, 0.6], [0.1, 0.3, 0.5], 4.5 / 6),
    ],
)
def test_auroc_on_known_inputs(positive, negative, expected):
    assert auroc(positive, negative) == pytest.approx(expected)


def test_auroc_is_nan_for_an_empty_group():
    assert auroc([], [0.1]) != auroc([], [0.1])


def test_attribute_spans_name_each_attribute_word_and_the_wrong_one():
    text = "The woman has long blonde hair. She is wearing a black t-shirt and blue jeans, with gray shoes."
    black = text.index("black")
    spans = attribute_spans(text, {(black, black + 5): "upper_colour"})
    found = [(text[s.char_start : s.char_end], s.attribute, s.wrong) for s in spans]
    assert found == [
        ("long", "hair_length", False),
        ("blonde", "hair_colour", False),
        ("black", "upper_colour", True),
        ("t-shirt", "upper_type", False),
        ("blue", "lower_colour", False),
        ("jeans", "lower_type", False),
        ("gray", "shoe_colour", False),
    ]
    assert [(s.attribute, s.wrong) for s in attribute_spans("a man with a black shoulder bag", {})] == [
        ("bag_colour", False),
        ("bag_type", False),
    ]


def test_correct_words_are_the_persons_attributes_and_every_record_is_found(synthetic: Path):
    captions, _ = select_captions(synthetic, max_captions=10_000)
    people = {row["image"]: row for row in map(json.loads, (synthetic / "attributes.jsonl").read_text().splitlines())}
    records = [json.loads(line) for line in (synthetic / "noise_words.jsonl").read_text().splitlines()]
    scored = {(c.file, c.image): c for c in captions}
    for caption in captions:
        for word in caption.words:
            if not word.wrong:
                assert caption.text[word.char_start : word.char_end] == people[caption.image][word.attribute]
    for record in records:
        if (record["file"], record["image"]) in scored:
            words = scored[(record["file"], record["image"])].words
            wrong = [(w.char_start, w.char_end, w.attribute) for w in words if w.wrong]
            assert wrong == [(record["char_start"], record["char_end"], record["attribute"])]


def test_word_token_spans_reproduce_the_caption_ids(synthetic: Path):
    tokenizer = CaptionTokenizer(77)
    captions, _ = select_captions(synthetic, max_captions=10_000)
    for caption in captions:
        ids = tokenizer.encode(caption.text)
        spans = [(w.char_start, w.char_end) for w in caption.words]
        for (start, end), (first, last) in zip(spans, word_token_spans(tokenizer, caption.text, spans), strict=True):
            assert first == len(tokenizer.encode(caption.text[:start]))  # the prefix rule
            assert ids[first:last] == tokenizer.encode(caption.text[start:end])
            assert ids[:last] == tokenizer.encode(caption.text[:end])


def test_a_span_inside_a_word_is_refused():
    with pytest.raises(NoiseAurocError, match="token boundaries"):
        word_token_spans(CaptionTokenizer(77), "a man with blonde hair", [(12, 15)])


def _expected_selection(data: Path, max_captions: int) -> list[tuple[str, str]]:
    """(file, image) of the clean captions the CLI should score, rebuilt from the caption files."""
    per_file = {name: json.loads((data / name).read_text()) for name in CAPTION_FILES}
    keys = [
        (name, image)
        for image in sorted(set().union(*per_file.values()))
        for name in CAPTION_FILES
        if image in per_file[name] and not DIRTY_CAPTION.search(per_file[name][image])
    ]
    return keys[:max_captions]


@pytest.mark.parametrize("context_length", [77, 16])
def test_cli_writes_counts_consistent_with_the_noise_records(
    synthetic: Path, tmp_path: Path, capsys, context_length: int
):
    out = tmp_path / "noise.json"
    checkpoint = _export(tmp_path / "export", context_length)
    args = ["--checkpoint", str(checkpoint), "--data", str(synthetic), "--max-captions", "60", "--batch-size", "16"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[2].split()[0] == "all"
    result = json.loads(out.read_text())
    assert result.keys() >= GROUP_KEYS and {"captions", "per_attribute", "truncated_words", "model"} <= result.keys()
    scored = set(_expected_selection(synthetic, 60))
    records = [json.loads(line) for line in (synthetic / "noise_words.jsonl").read_text().splitlines()]
    recorded = sum((r["file"], r["image"]) in scored for r in records)
    captions, _ = select_captions(synthetic, max_captions=60)
    total_words = sum(len(c.words) for c in captions)
    assert result["captions"]["scored"] == len(scored) == 60
    assert result["correct"] + result["wrong"] + result["truncated_words"] == total_words
    if context_length == 77:
        assert result["truncated_words"] == 0 and result["wrong"] == recorded > 0
    else:
        assert result["truncated_words"] > 0 and result["wrong"] <= recorded
    per_attribute = result["per_attribute"].values()
    assert sum(row["wrong"] for row in per_attribute) == result["wrong"]
    assert all(row.keys() == GROUP_KEYS for row in per_attribute)
    assert 0.0 <= result["auroc"]["max"] <= 1.0


def test_cli_scores_an_untrained_config(synthetic: Path, tmp_path: Path, capsys):
    config = tmp_path / "c.yaml"
    model = dataclasses.asdict(tiny_model_config(image_size=(64, 32), context_length=77))
    config.write_text(json.dumps({"model": model, "nam": {"tap_layer": 1}}))  # JSON is YAML
    assert main(["--config", str(config), "--data", str(synthetic), "--max-captions", "8"]) == 0
    assert "untrained model of" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("checkpoint", "no checkpoint at"),
        ("data", "data folder not found"),
        ("noise", "noise_words.jsonl not found"),
    ],
)
def test_bad_paths_are_one_line_errors(synthetic: Path, tmp_path: Path, capsys, change: str, message: str):
    checkpoint = tmp_path / "nowhere" if change == "checkpoint" else _export(tmp_path / "export", 77)
    data = tmp_path / "missing" if change == "data" else synthetic
    if change == "noise":
        data = tmp_path / "copy"
        data.mkdir()
        for name in CAPTION_FILES:
            (data / name).write_text((synthetic / name).read_text())
    assert main(["--checkpoint", str(checkpoint), "--data", str(data)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error
