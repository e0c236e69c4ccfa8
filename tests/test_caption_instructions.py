"""The TDE instruction file and the per-image choices that must not depend on order, batch or rank."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from data.captioning.images import rank_of
from data.captioning.instructions import DEFAULT_INSTRUCTIONS, CaptioningError, load_instructions

SLOT_VOCABULARY = {  # docs/method.md
    "[person/woman/man]",
    "[hair description]",
    "[clothing description]",
    "[footwear description]",
    "[belongings description]",
    "[accessory description]",
}
NAMES = [f"{video:05d}_{frame:04d}.jpg" for video in range(460) for frame in range(10)]  # 4,600 images


def test_the_default_file_has_46_distinct_templates_in_the_slot_vocabulary():
    instructions = load_instructions(DEFAULT_INSTRUCTIONS)
    templates = instructions.templates
    assert len(templates) >= 46 and len(set(templates)) == len(templates)
    slots_per_template = [set(re.findall(r"\[[^\]]*\]", t)) for t in templates]
    assert all(slots and slots <= SLOT_VOCABULARY for slots in slots_per_template)
    assert set().union(*slots_per_template) == SLOT_VOCABULARY
    assert instructions.prompt("static", None) == instructions.static
    assert all(instructions.prompt("dynamic", i).count(t) == 1 for i, t in enumerate(templates))


def test_the_template_of_an_image_depends_only_on_seed_and_file_name():
    instructions = load_instructions()
    choices = [instructions.template_id(name, 0) for name in NAMES]
    assert choices == [instructions.template_id(name, 0) for name in NAMES]
    assert dict(zip(NAMES, choices, strict=True)) == {n: instructions.template_id(n, 0) for n in reversed(NAMES)}
    counts = Counter(choices)  # 100 per template expected
    assert len(counts) == len(instructions.templates) and 50 < min(counts.values()) <= max(counts.values()) < 150
    other_seed = [instructions.template_id(name, 1) for name in NAMES]
    assert sum(a != b for a, b in zip(choices, other_seed, strict=True)) > 0.9 * len(NAMES)


def test_ranks_split_the_images_into_a_partition_of_near_equal_parts():
    ranks = [rank_of(name, 3) for name in NAMES]
    assert set(ranks) == {0, 1, 2} and max(Counter(ranks).values()) < 1.1 * len(NAMES) / 3
    assert all(rank_of(name, 1) == 0 for name in NAMES)


@pytest.mark.parametrize(
    "text, message",
    [
        ("static: a\ndynamic: b {template}\ntemplates: ['a [slot]']\nextra: 1\n", "must have exactly the keys"),
        ("static: a\ndynamic: no placeholder\ntemplates: ['a [slot]']\n", "instructions.dynamic must hold {template}"),
        ("static: a\ndynamic: b {template}\ntemplates: ['no slot here']\n", "instructions.templates[0] has no [slot]"),
        ("static: a\ndynamic: b {template}\ntemplates: 'a [slot]'\n", "must be a list"),
        ("static: ''\ndynamic: b {template}\ntemplates: ['a [slot]']\n", "instructions.static must be a non-empty"),
        ("static: [unclosed\n", "is not valid YAML: expected ',' or ']'"),
    ],
)
def test_a_bad_instructions_file_gives_one_line_naming_the_field(tmp_path: Path, text: str, message: str):
    path = tmp_path / "instructions.yaml"
    path.write_text(text)
    with pytest.raises(CaptioningError) as error:
        load_instructions(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_instructions_file_is_named(tmp_path: Path):
    with pytest.raises(CaptioningError, match="instructions file not found: .*nope.yaml"):
        load_instructions(tmp_path / "nope.yaml")
