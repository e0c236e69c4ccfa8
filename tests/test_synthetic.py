"""The synthetic data generator: determinism, layout, the exactness of the noise and dirt records, the CUHK-PEDES
file, and whether the named attributes are visible in the pixels."""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import synthetic
from data.synthetic import (
    ATTRIBUTE_VOCABULARY,
    CAPTION_FILES,
    CUHK_DIR,
    PRETRAIN_DIR,
    Article,
    AttributeWord,
    PersonAttributes,
    body_box,
    generate,
    is_dirty,
    processed_tokens,
    render_person,
    render_pieces,
    sample_scene,
    upper_garment_box,
)
from data.synthetic.templates import DYNAMIC_TEMPLATES, SLOTS

SMALL = {"train_images": 40, "test_identities": 8, "images_per_test_identity": 3, "split_identities": 2}
LARGE = {"train_images": 400, "test_identities": 4, "images_per_test_identity": 1, "split_identities": 1}
LARGE_NOISE_FRACTION, LARGE_DIRTY_FRACTION = 0.15, 0.05


def _generate(root: Path, **kwargs) -> tuple[Path, dict]:
    summary = generate(root, progress=False, **kwargs)
    return root, summary


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, dict]:
    return _generate(tmp_path_factory.mktemp("small"), seed=0, **SMALL)


@pytest.fixture(scope="module")
def large_run(tmp_path_factory) -> tuple[Path, dict]:
    return _generate(
        tmp_path_factory.mktemp("large"),
        seed=1,
        noise_fraction=LARGE_NOISE_FRACTION,
        dirty_fraction=LARGE_DIRTY_FRACTION,
        **LARGE,
    )


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _captions(root: Path) -> dict[str, dict[str, str]]:
    return {name: json.loads((root / PRETRAIN_DIR / name).read_text()) for name in CAPTION_FILES}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- determinism ------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(small_run, tmp_path):
    root, _ = small_run
    again, _ = _generate(tmp_path / "again", seed=0, **SMALL)
    assert _files(root) == _files(again)


def test_different_seed_gives_different_data(small_run, tmp_path):
    root, _ = small_run
    other, _ = _generate(tmp_path / "other", seed=1, **SMALL)
    assert _captions(root)["Ts-qwen.json"] != _captions(other)["Ts-qwen.json"]
    image = Path(PRETRAIN_DIR) / "imgs" / "000000.jpg"
    assert (root / image).read_bytes() != (other / image).read_bytes()


def test_an_image_depends_only_on_its_index(small_run, tmp_path):
    """Per-image seeding: a shorter run reproduces the first images and captions of a longer one."""
    root, _ = small_run
    shorter, _ = _generate(tmp_path / "shorter", seed=0, **{**SMALL, "train_images": 10})
    for index in range(10):
        image = Path(PRETRAIN_DIR) / "imgs" / f"{index:06d}.jpg"
        assert (root / image).read_bytes() == (shorter / image).read_bytes()
    long_captions, short_captions = _captions(root), _captions(shorter)
    for name in CAPTION_FILES:
        assert {k: long_captions[name][k] for k in short_captions[name]} == short_captions[name]


# ---- pretraining layout -----------------------------------------------------------------------------------------


def test_pretraining_layout_and_counts(small_run):
    root, summary = small_run
    pretraining = root / PRETRAIN_DIR
    images = sorted(path.name for path in (pretraining / "imgs").iterdir())
    assert images == [f"{index:06d}.jpg" for index in range(SMALL["train_images"])]
    with Image.open(pretraining / "imgs" / images[0]) as image:
        assert image.size == (64, 128) and image.mode == "RGB" and image.format == "JPEG"
    for name, mapping in _captions(root).items():
        assert list(mapping) == images, name
        assert all(isinstance(caption, str) and caption for caption in mapping.values()), name
    attribute_rows = _jsonl(pretraining / "attributes.jsonl")
    assert [row["image"] for row in attribute_rows] == images
    assert set(attribute_rows[0]) == {"image", *(field.name for field in dataclasses.fields(PersonAttributes))}
    assert summary[PRETRAIN_DIR]["images"] == SMALL["train_images"]
    assert summary[PRETRAIN_DIR]["captions"] == 4 * SMALL["train_images"]
    assert summary[PRETRAIN_DIR]["noisy_captions"] == len(_jsonl(pretraining / "noise_words.jsonl"))
    assert summary[PRETRAIN_DIR]["dirty_captions"] == len(_jsonl(pretraining / "dirty_captions.jsonl"))


def test_template_bank_is_plain_data_with_slots():
    assert len(DYNAMIC_TEMPLATES) >= 12
    assert len(set(DYNAMIC_TEMPLATES)) == len(DYNAMIC_TEMPLATES)
    for template in DYNAMIC_TEMPLATES:
        assert sum(slot in template for slot in SLOTS) >= 4, template


def test_dynamic_captions_draw_varied_templates(large_run):
    root, _ = large_run
    openings = {caption.split()[0] for caption in _captions(root)["Td-qwen.json"].values()}
    assert len(openings) >= 6  # "A", "The", "Wearing", "Hair:", "Seen", "With", ...


# ---- noise records ----------------------------------------------------------------------------------------------


def test_noise_records_match_the_written_captions(small_run, large_run):
    for root, _ in (small_run, large_run):
        captions = _captions(root)
        attributes = {row["image"]: row for row in _jsonl(root / PRETRAIN_DIR / "attributes.jsonl")}
        records = _jsonl(root / PRETRAIN_DIR / "noise_words.jsonl")
        assert records, "expected some noisy captions"
        assert len({(r["file"], r["image"]) for r in records}) == len(records), "one wrong word per caption at most"
        for record in records:
            caption = captions[record["file"]][record["image"]]
            assert caption[record["char_start"] : record["char_end"]] == record["wrong"], record
            words = caption.split()[record["word_index"] : record["word_index"] + record["num_words"]]
            assert " ".join(words).strip(string.punctuation) == record["wrong"], (record, caption)
            assert record["wrong"] != record["correct"]
            assert record["wrong"] in ATTRIBUTE_VOCABULARY[record["attribute"]]
            assert attributes[record["image"]][record["attribute"]] == record["correct"], record


def test_realised_noise_and_dirty_fractions_are_close_to_requested(large_run):
    root, summary = large_run
    images = LARGE["train_images"]
    noise_fraction = len(_jsonl(root / PRETRAIN_DIR / "noise_words.jsonl")) / (4 * images)
    dirty_fraction = len(_jsonl(root / PRETRAIN_DIR / "dirty_captions.jsonl")) / (2 * images)
    # tolerances are ~4 binomial standard deviations at these counts
    assert abs(noise_fraction - LARGE_NOISE_FRACTION) < 0.035
    assert abs(dirty_fraction - LARGE_DIRTY_FRACTION) < 0.03
    assert summary[PRETRAIN_DIR]["noise_fraction"] == round(noise_fraction, 4)


def test_noise_fraction_zero_writes_no_noise(tmp_path):
    root, summary = _generate(tmp_path, train_images=20, test_identities=2, split_identities=1, noise_fraction=0.0)
    assert summary[PRETRAIN_DIR]["noisy_captions"] == 0
    assert (root / PRETRAIN_DIR / "noise_words.jsonl").read_text() == ""


# ---- dirty captions ---------------------------------------------------------------------------------------------


def test_dirty_captions_hold_a_slot_or_markup_and_clean_ones_do_not(large_run):
    root, _ = large_run
    captions = _captions(root)
    dirty = {(row["file"], row["image"]): row for row in _jsonl(root / PRETRAIN_DIR / "dirty_captions.jsonl")}
    assert {row["kind"] for row in dirty.values()} == {"slot", "markup"}
    for file_name, mapping in captions.items():
        for image, caption in mapping.items():
            row = dirty.get((file_name, image))
            if row is None:
                assert not is_dirty(caption), (file_name, image, caption)
                continue
            assert CAPTION_FILES[file_name][0] == "dynamic", "only dynamic captions may be dirty"
            assert is_dirty(caption) and row["marker"] in caption, (row, caption)
            if row["kind"] == "slot":
                assert row["marker"] in SLOTS
            else:
                assert row["marker"].startswith("<") or "<" in row["marker"]


def test_is_dirty_recognises_slots_and_markup():
    assert is_dirty("A man in [clothing description] and red shoes.")
    assert is_dirty("A [person/woman/man] with short hair.")
    assert is_dirty("<ref>man</ref> with short black hair")
    assert not is_dirty("A man in a red t-shirt and blue jeans, white shoes.")


# ---- caption rendering ------------------------------------------------------------------------------------------


def test_articles_follow_the_words_they_precede():
    def coat(colour: str) -> list:
        return [Article(capital=True, noun_attribute="upper_type"), AttributeWord("upper_colour", colour), " ",
                AttributeWord("upper_type", "coat")]  # fmt: skip

    assert render_pieces(coat("orange"))[0] == "An orange coat"
    assert render_pieces(coat("red"))[0] == "A red coat"
    jeans = [Article(noun_attribute="lower_type"), AttributeWord("lower_colour", "blue"), " ",
             AttributeWord("lower_type", "jeans")]  # fmt: skip
    text, spans = render_pieces(["in ", *jeans])
    assert text == "in blue jeans"
    assert text[slice(*spans[-1])] == "jeans"


def test_processed_tokens_are_lowercase_words():
    assert processed_tokens("The man wears a Red T-shirt, and blue jeans.") == [
        "the", "man", "wears", "a", "red", "t-shirt", "and", "blue", "jeans",
    ]  # fmt: skip


# ---- CUHK-PEDES layout ------------------------------------------------------------------------------------------


def _all_clean_captions(attrs: PersonAttributes) -> set[str]:
    """Every caption a clean (noise- and dirt-free) generator could write for attrs."""
    texts = {
        render_pieces(synthetic.static_qwen_pieces(attrs))[0],
        render_pieces(synthetic.static_shikra_pieces(attrs))[0],
    }
    for captioner in ("qwen", "shikra"):
        fillers = synthetic.slot_fillers(attrs, captioner)
        texts |= {render_pieces(synthetic.fill_template(template, fillers))[0] for template in DYNAMIC_TEMPLATES}
    return texts


def test_reid_raw_has_cuhk_fields_splits_and_clean_captions(small_run):
    root, summary = small_run
    cuhk = root / CUHK_DIR
    entries = json.loads((cuhk / "reid_raw.json").read_text())
    identities = {row["id"]: row for row in _jsonl(cuhk / "attributes.jsonl")}
    assert [entry["split"] for entry in entries] == sorted(
        (entry["split"] for entry in entries), key=("train", "val", "test").index
    )
    ids_by_split: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    for entry in entries:
        assert set(entry) == {"split", "captions", "file_path", "processed_tokens", "id"}
        assert isinstance(entry["id"], int) and entry["id"] >= 1
        assert entry["file_path"].startswith(f"{entry['split']}/p{entry['id']:04d}_")
        assert (cuhk / "imgs" / entry["file_path"]).is_file()
        assert len(entry["captions"]) == 2 and entry["captions"][0] != entry["captions"][1]
        assert entry["processed_tokens"] == [processed_tokens(caption) for caption in entry["captions"]]
        attrs = PersonAttributes(**{k: v for k, v in identities[entry["id"]].items() if k not in ("id", "split")})
        clean = _all_clean_captions(attrs)
        for caption in entry["captions"]:
            assert caption in clean and not is_dirty(caption), caption
        ids_by_split[entry["split"]].add(entry["id"])
    assert {split: len(ids) for split, ids in ids_by_split.items()} == {
        "train": SMALL["split_identities"], "val": SMALL["split_identities"], "test": SMALL["test_identities"],
    }  # fmt: skip
    assert not (ids_by_split["train"] & ids_by_split["val"] or ids_by_split["val"] & ids_by_split["test"])
    test_images = [entry for entry in entries if entry["split"] == "test"]
    assert len(test_images) == SMALL["test_identities"] * SMALL["images_per_test_identity"]
    assert summary[CUHK_DIR]["test"] == {"ids": 8, "images": 24, "captions": 48}
    keys = [PersonAttributes(**{k: v for k, v in row.items() if k not in ("id", "split")}).identity_key()
            for row in identities.values()]  # fmt: skip
    assert len(set(keys)) == len(keys), "CUHK identities must be distinguishable by their attributes"


def test_images_of_one_test_identity_vary(small_run):
    root, _ = small_run
    paths = sorted((root / CUHK_DIR / "imgs" / "test").glob("p*_*.jpg"))[:3]
    pixels = [np.asarray(Image.open(path), dtype=np.float32) for path in paths]
    assert np.abs(pixels[0] - pixels[1]).mean() > 5 and np.abs(pixels[1] - pixels[2]).mean() > 5


# ---- attributes are visible -------------------------------------------------------------------------------------

PLAIN_PERSON = PersonAttributes(
    gender="man",
    skin_tone="medium",
    hair_colour="black",
    hair_length="short",
    upper_type="t-shirt",
    upper_colour="red",
    lower_type="trousers",
    lower_colour="gray",
    shoe_colour="black",
    bag_type=None,
    bag_colour=None,
    accessory_type=None,
    accessory_colour=None,
)


def _mean_rgb(image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(image.crop(box), dtype=np.float32).reshape(-1, 3).mean(axis=0)


@pytest.mark.parametrize("scene_seed", range(5))
def test_upper_garment_colour_is_visible(scene_seed):
    scene = sample_scene(np.random.default_rng(scene_seed), (128, 64))
    box = upper_garment_box(scene)
    red = _mean_rgb(render_person(PLAIN_PERSON, scene), box)
    blue = _mean_rgb(render_person(dataclasses.replace(PLAIN_PERSON, upper_colour="blue"), scene), box)
    assert red[0] - red[2] > 80, red
    assert blue[2] - blue[0] > 80, blue


@pytest.mark.parametrize("scene_seed", range(3))
def test_lower_garment_and_hair_length_are_visible(scene_seed):
    scene = sample_scene(np.random.default_rng(scene_seed), (128, 64))
    thigh = body_box(scene, 0.02, 0.58, 0.05, 0.64)
    green_trousers = render_person(dataclasses.replace(PLAIN_PERSON, lower_colour="green"), scene)
    green = _mean_rgb(green_trousers, thigh)
    assert green[1] - max(green[0], green[2]) > 50, green
    beside_neck = body_box(scene, 0.05, 0.20, 0.07, 0.26)  # long hair falls over the shoulders here
    blonde = dataclasses.replace(PLAIN_PERSON, hair_colour="blonde", upper_colour="blue")
    short_hair = _mean_rgb(render_person(blonde, scene), beside_neck)
    long_hair = _mean_rgb(render_person(dataclasses.replace(blonde, hair_length="long"), scene), beside_neck)
    assert long_hair[0] - short_hair[0] > 60, (short_hair, long_hair)  # blonde is far redder than blue


# ---- command line -----------------------------------------------------------------------------------------------


def test_cli_prints_summary_and_rate_and_refuses_to_overwrite(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--train-images", "5", "--test-identities", "2", "--split-identities", "1",
            "--size", "64x32", "--no-progress"]  # fmt: skip
    assert synthetic.main(argv) == 0
    output = capsys.readouterr().out
    assert "images/minute" in output and '"luperson_mllm"' in output
    with Image.open(tmp_path / PRETRAIN_DIR / "imgs" / "000000.jpg") as image:
        assert image.size == (32, 64)
    assert synthetic.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and "--overwrite" in error and error.count("\n") == 1
    assert synthetic.main([*argv, "--overwrite"]) == 0


def test_bad_arguments_fail_with_one_line():
    with pytest.raises(synthetic.SyntheticDataError, match="noise_fraction must be in"):
        generate("/nonexistent-never-written", noise_fraction=1.5, progress=False)
    with pytest.raises(synthetic.SyntheticDataError, match="train_images must be >= 1"):
        generate("/nonexistent-never-written", train_images=0, progress=False)
