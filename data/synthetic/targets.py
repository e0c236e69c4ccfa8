"""Direct-transfer target sets in the three benchmark layouts, each with its own look and its own "human annotator".

    python -m data.synthetic.targets --out DIR [--seed 0] [--test-identities 100] [--images-per-identity 2]

writes DIR/cuhk_pedes (reid_raw.json), DIR/icfg_pedes (ICFG-PEDES.json, train/test) and DIR/rstpreid
(data_captions.json), each with imgs/ beside it, readable by data/datasets.py. No model trains on them: they
measure transfer from the pretraining set, as the paper's Table 1 does.

The real benchmarks differ from LUPerson-MLLM and from each other in two ways, both reproduced here:
- the look (TargetLook): resolution, camera exposure and colour cast, sensor noise, blur, and the person's
  scale and pose; ICFG-PEDES (from MSMT17) is dark and noisy at low resolution, RSTPReid is bright, soft and
  low in contrast, CUHK-PEDES sits in between;
- the phrasing: sentences written by people, not by an MLLM following an instruction. Each set has its own
  annotator (AnnotatorStyle): sentence patterns, the order in which items are described, synonyms that neither
  the static captions nor any dynamic template uses ("trousers" -> "pants", "shoes" -> "sneakers", "gray" ->
  "grey"), "colour after noun" phrases ("a jacket that is red"), and sentences that describe no attribute.
Identities are drawn from their own stream per set, so no target identity is a pretraining identity.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ImageFilter

from data.cli_errors import error_boundary
from data.outputs import atomic_folder, check_output_subfolders, output_argument
from data.synthetic.attributes import PLURAL_NOUNS, PersonAttributes, pick, sample_attributes
from data.synthetic.cuhk import processed_tokens
from data.synthetic.errors import SyntheticDataError
from data.synthetic.output import IMAGE_DIR, save_jpeg, write_json
from data.synthetic.render import Scene, render_person
from data.synthetic.streams import Stream, stream_rng


@dataclass(frozen=True)
class TargetLook:
    """Camera and framing statistics of one target set (ranges are drawn uniformly per image)."""

    size: tuple[int, int]  # (H, W) pixels as stored
    person_height: tuple[float, float]  # share of the image height
    centre_jitter: float  # body axis offset, share of the width
    leg_spread: tuple[float, float]
    brightness: tuple[float, float]
    contrast: tuple[float, float]
    tint: tuple[float, float]
    sensor_noise: tuple[float, float]
    blur_radius: float  # Gaussian blur after rendering; 0 = sharp


@dataclass(frozen=True)
class AnnotatorStyle:
    """How one set's annotators write: synonyms (word -> choices, the original among them or not), the order in
    which items are described, and how often a colour follows its noun or a sentence says nothing visual."""

    synonyms: dict[str, tuple[str, ...]]
    item_order: tuple[str, ...]
    openers: tuple[str, ...]  # "{Subject}" is "The man", "A young woman", ...
    subjects: dict[str, tuple[str, ...]]
    colour_after_noun: float
    filler: tuple[str, ...]
    filler_rate: float
    hair_first: bool = True
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetSet:
    directory: str
    annotation_file: str
    splits: tuple[str, ...]
    first_id: int  # CUHK-PEDES ids are 1-based, the others 0-based
    look: TargetLook
    annotator: AnnotatorStyle
    captions_per_image: int


TOOL = "python -m data.synthetic.targets"
TARGETS: dict[str, TargetSet] = {
    "cuhk_pedes": TargetSet(
        "cuhk_pedes",
        "reid_raw.json",
        ("train", "val", "test"),
        1,
        TargetLook((128, 64), (0.8, 0.95), 0.1, (0.0, 0.06), (-20, 20), (0.85, 1.1), (0.94, 1.06), (0, 5), 0.0),
        AnnotatorStyle(
            synonyms={"shoes": ("shoes", "sneakers"), "t-shirt": ("t-shirt", "tee"), "gray": ("gray", "grey")},
            item_order=("hair", "upper", "lower", "shoes", "bag", "accessory"),
            openers=("{Subject} is wearing ", "{Subject} wears ", "{Subject} has on "),
            subjects={"man": ("The man", "A man", "This man"), "woman": ("The woman", "A woman", "This lady")},
            colour_after_noun=0.15,
            filler=("{pronoun} is walking forward.", "{pronoun} is looking down.", "{pronoun} walks alone."),
            filler_rate=0.3,
        ),
        2,
    ),
    "icfg_pedes": TargetSet(
        "icfg_pedes",
        "ICFG-PEDES.json",
        ("train", "test"),
        0,
        TargetLook((96, 48), (0.68, 0.9), 0.15, (0.0, 0.09), (-50, 0), (0.7, 1.0), (0.85, 1.15), (3, 11), 0.0),
        AnnotatorStyle(
            synonyms={
                "trousers": ("pants", "slacks"),
                "shoes": ("footwear", "sneakers", "shoes"),
                "jacket": ("jacket", "coat"),
                "handbag": ("purse", "handbag"),
                "gray": ("grey",),
            },
            item_order=("upper", "lower", "shoes", "hair", "bag", "accessory"),
            openers=("{Subject} is dressed in ", "{Subject} has on "),
            subjects={"man": ("The male", "The man"), "woman": ("The female", "The woman")},
            colour_after_noun=0.4,
            filler=("{pronoun} is in the middle of the frame.", "{pronoun} stands near a wall.", "Lighting is dim."),
            filler_rate=0.5,
            hair_first=False,
        ),
        1,
    ),
    "rstpreid": TargetSet(
        "rstpreid",
        "data_captions.json",
        ("train", "val", "test"),
        0,
        TargetLook((144, 64), (0.85, 0.98), 0.06, (0.02, 0.08), (0, 35), (0.65, 0.95), (0.97, 1.03), (0, 3), 0.8),
        AnnotatorStyle(
            synonyms={
                "trousers": ("pants", "trousers"),
                "jeans": ("jeans", "denims"),
                "shoes": ("sneakers", "boots", "shoes"),
                "backpack": ("backpack", "rucksack"),
                "t-shirt": ("t-shirt", "short-sleeved shirt"),
            },
            item_order=("upper", "bag", "lower", "shoes", "hair", "accessory"),
            openers=("{Subject} walking by in ", "{Subject} in ", "{Subject} who wears "),
            subjects={"man": ("A guy", "A man", "A young man"), "woman": ("A girl", "A woman", "A young woman")},
            colour_after_noun=0.25,
            filler=("{pronoun} is walking on the road.", "{pronoun} seems to be in a hurry."),
            filler_rate=0.4,
            hair_first=False,
        ),
        2,
    ),
}


def _replace_words(phrase: str, synonyms: dict[str, tuple[str, ...]], rng: np.random.Generator) -> str:
    words = []
    for word in phrase.split(" "):
        words.append(pick(rng, synonyms[word]) if word in synonyms else word)
    return " ".join(words)


def _item(colour: str, noun: str, style: AnnotatorStyle, rng: np.random.Generator, *, article: bool) -> str:
    noun_text = _replace_words(noun, style.synonyms, rng)
    colour_text = _replace_words(colour, style.synonyms, rng)
    if rng.random() < style.colour_after_noun:
        det = "a pair of " if noun in PLURAL_NOUNS or noun == "shoes" else "a "
        return f"{det}{noun_text} that {'are' if det == 'a pair of ' else 'is'} {colour_text}"
    phrase = f"{colour_text} {noun_text}"
    if not article or noun in PLURAL_NOUNS or noun == "shoes":
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def annotator_caption(attrs: PersonAttributes, style: AnnotatorStyle, rng: np.random.Generator) -> str:
    """One human-style description of `attrs` in `style`; every attribute appears (wording varies)."""
    pronoun = "He" if attrs.gender == "man" else "She"
    subject = pick(rng, style.subjects[attrs.gender])
    hair = f"{_replace_words(attrs.hair_length, style.synonyms, rng)} {_replace_words(attrs.hair_colour, style.synonyms, rng)} hair"
    worn = [_item(attrs.upper_colour, attrs.upper_type, style, rng, article=True)]
    if attrs.lower_type:
        worn.append(_item(attrs.lower_colour, attrs.lower_type, style, rng, article=True))
    worn.append(_item(attrs.shoe_colour, "shoes", style, rng, article=False))
    sentences = []
    opener = pick(rng, style.openers).format(Subject=subject)
    if style.hair_first:
        sentences.append(f"{subject} has {hair}.")
        sentences.append(opener.replace(subject, pronoun) + ", ".join(worn[:-1]) + " and " + worn[-1] + ".")
    else:
        sentences.append(opener + ", ".join(worn[:-1]) + " and " + worn[-1] + ".")
        sentences.append(f"{pronoun} has {hair}.")
    if attrs.bag_type:
        bag = _item(attrs.bag_colour, attrs.bag_type, style, rng, article=True)
        sentences.append(f"{pronoun} {pick(rng, ('carries', 'is holding', 'has'))} {bag}.")
    if attrs.accessory_type:
        accessory = _item(attrs.accessory_colour, attrs.accessory_type, style, rng, article=True)
        sentences.append(f"{pronoun} also has {accessory}.")
    if rng.random() < style.filler_rate:
        sentences.insert(int(rng.integers(1, len(sentences) + 1)), pick(rng, style.filler).format(pronoun=pronoun))
    return " ".join(sentences)


def sample_target_scene(look: TargetLook, rng: np.random.Generator) -> Scene:
    height, width = look.size
    person_height = rng.uniform(*look.person_height) * height
    return Scene(
        size=look.size,
        person_height=person_height,
        centre_x=width / 2 + rng.uniform(-look.centre_jitter, look.centre_jitter) * width,
        top_y=rng.uniform(0.01 * height, max(0.011 * height, height - person_height - 0.005 * height)),
        leg_spread=rng.uniform(*look.leg_spread),
        bag_side=1 if rng.random() < 0.5 else -1,
        brightness=rng.uniform(*look.brightness),
        contrast=rng.uniform(*look.contrast),
        tint=tuple(float(gain) for gain in rng.uniform(*look.tint, size=3)),
        sensor_noise=rng.uniform(*look.sensor_noise),
        detail_seed=int(rng.integers(2**31)),
    )


def _distinct_identities(seed: int, set_index: int, count: int) -> list[PersonAttributes]:
    identities, seen = [], set()
    for draw in range(count * 50):
        attrs = sample_attributes(stream_rng(seed, Stream.TARGET_PERSON, set_index, draw))
        if attrs.identity_key() not in seen:
            seen.add(attrs.identity_key())
            identities.append(attrs)
            if len(identities) == count:
                return identities
    raise SyntheticDataError(f"could not draw {count} distinct identities; ask for fewer test identities")


def write_target_set(
    root: Path,
    target: TargetSet,
    *,
    seed: int,
    set_index: int,
    identities_per_split: dict[str, int],
    images_per_identity: int,
    on_image: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    drawn = _distinct_identities(seed, set_index, sum(identities_per_split[s] for s in target.splits))
    entries, summary, offset, next_id = [], {}, 0, target.first_id
    for split_code, split in enumerate(target.splits):
        (root / IMAGE_DIR / split).mkdir(parents=True)
        people = drawn[offset : offset + identities_per_split[split]]
        offset += len(people)
        for identity_index, attrs in enumerate(people):
            person_id, next_id = next_id, next_id + 1
            for image_index in range(images_per_identity):
                path = f"{split}/{person_id:04d}_c{image_index}.jpg"
                rng = stream_rng(seed, Stream.TARGET_SCENE, set_index, split_code, identity_index, image_index)
                image = render_person(attrs, sample_target_scene(target.look, rng))
                if target.look.blur_radius:
                    image = image.filter(ImageFilter.GaussianBlur(target.look.blur_radius))
                save_jpeg(image, root / IMAGE_DIR / path)
                text_rng = stream_rng(seed, Stream.TARGET_CAPTION, set_index, split_code, identity_index, image_index)
                captions = [
                    annotator_caption(attrs, target.annotator, text_rng) for _ in range(target.captions_per_image)
                ]
                if target.annotation_file == "data_captions.json":
                    entries.append({"id": person_id, "img_path": path, "captions": captions, "split": split})
                else:
                    tokens = [processed_tokens(caption) for caption in captions]
                    entries.append(
                        {
                            "split": split,
                            "captions": captions,
                            "file_path": path,
                            "processed_tokens": tokens,
                            "id": person_id,
                        }
                    )
                on_image()
        summary[split] = {"ids": len(people), "images": len(people) * images_per_identity}
    write_json(root / target.annotation_file, entries)
    return summary


def write_targets(
    out_dir: str | Path,
    *,
    seed: int = 0,
    test_identities: int = 100,
    images_per_identity: int = 2,
    split_identities: int = 4,
    overwrite: bool = False,
) -> dict[str, Any]:
    """All three target sets under out_dir; refuses to replace existing ones unless `overwrite`."""
    if test_identities < 1 or images_per_identity < 1 or split_identities < 1:
        raise SyntheticDataError("test_identities, images_per_identity and split_identities must be >= 1")
    out_dir = Path(out_dir)
    check_output_subfolders(out_dir, list(TARGETS), flag="--out", overwrite=overwrite, tool=TOOL)
    out_dir.mkdir(exist_ok=True)
    counts = {"train": split_identities, "val": split_identities, "test": test_identities}
    summary = {}
    for index, (name, target) in enumerate(TARGETS.items()):
        with atomic_folder(out_dir / name, tool=TOOL) as partial:
            summary[name] = write_target_set(
                partial,
                target,
                seed=seed,
                set_index=index,
                identities_per_split=counts,
                images_per_identity=images_per_identity,
            )
    return summary


@error_boundary
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic.targets", description=__doc__.split("\n\n")[0])
    output_argument(
        parser,
        "--out",
        kind="subfolders",
        subfolders=tuple(TARGETS),
        required=True,
        help="gets one folder per target set",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-identities", type=int, default=100)
    parser.add_argument("--images-per-identity", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true", help="replace target-set folders this tool wrote")
    args = parser.parse_args(argv)
    try:
        summary = write_targets(
            args.out,
            seed=args.seed,
            test_identities=args.test_identities,
            images_per_identity=args.images_per_identity,
            overwrite=args.overwrite,
        )
    except (SyntheticDataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
