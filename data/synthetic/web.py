"""The "web" corpus: what CLIP's web pretraining data is to the paper, for the synthetic world's stand-in CLIP.

Generic, clean, short image-text pairs that teach what the colours, garments, hair and bags look like, and
nothing about the pretraining set's people or captions:
- a separate population of people (their own random streams, so no identity of the LUPerson-MLLM stand-in or
  of a target set appears), each captioned alt-text style with one to three of their attributes
  ("photo of a woman in a blue coat", "a man carrying a black backpack");
- close-ups of one item (hair, upper or lower garment, shoes) cut from such an image and captioned with that item
  alone ("a red jacket", "gray shoes").
Short captions that name only part of the image are what makes token-patch alignment learnable: a caption word
is matched by one region, and a close-up ties a word to a region with almost no context. The captions use the
attribute vocabulary of the other sets (a colour is one word everywhere) but none of their sentence patterns.

Layout: DIR/web/imgs/000123.jpg, web-a.json and web-b.json ({"000123.jpg": caption}, two alt-texts per image),
packable with data.pack like the LUPerson-MLLM stand-in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data.cli_errors import error_boundary, positive_int
from data.outputs import atomic_folder, check_output_folder, output_argument
from data.synthetic.attributes import PLURAL_NOUNS, PersonAttributes, pick, sample_attributes
from data.synthetic.output import IMAGE_DIR, save_jpeg, write_json
from data.synthetic.render import body_box, render_person, sample_scene
from data.synthetic.streams import Stream, stream_rng

WEB_FILES = ("web-a.json", "web-b.json")
CLOSE_UP_SHARE = 0.3  # of web images show one item close up
# Close-up boxes in body units (u across the axis, v down from the head top, in person heights).
CLOSE_UP_BOXES = {
    "hair": (-0.16, -0.03, 0.16, 0.2),
    "upper": (-0.2, 0.14, 0.2, 0.55),
    "lower": (-0.18, 0.45, 0.18, 0.92),
    "shoes": (-0.16, 0.82, 0.16, 1.02),
}
PREFIXES = ("", "", "photo of ", "a picture of ", "image of ")


def _with_article(phrase: str, noun: str) -> str:
    if noun in PLURAL_NOUNS:
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def item_phrases(attrs: PersonAttributes) -> dict[str, str]:
    """The noun phrase of every item the person has: "long blonde hair", "a red t-shirt", "gray shoes"."""
    phrases = {"hair": f"{attrs.hair_length} {attrs.hair_colour} hair"}
    phrases["upper"] = _with_article(f"{attrs.upper_colour} {attrs.upper_type}", attrs.upper_type)
    if attrs.lower_type:
        phrases["lower"] = _with_article(f"{attrs.lower_colour} {attrs.lower_type}", attrs.lower_type)
    phrases["shoes"] = f"{attrs.shoe_colour} shoes"
    if attrs.bag_type:
        phrases["bag"] = _with_article(f"{attrs.bag_colour} {attrs.bag_type}", attrs.bag_type)
    if attrs.accessory_type:
        phrases["accessory"] = _with_article(f"{attrs.accessory_colour} {attrs.accessory_type}", attrs.accessory_type)
    return phrases


VERBS = {"hair": "with", "upper": "in", "lower": "in", "shoes": "wearing", "bag": "carrying", "accessory": "wearing"}


def person_alt_text(attrs: PersonAttributes, rng: np.random.Generator) -> str:
    """ "photo of a woman in a blue coat and carrying a black backpack": one to three of the person's items."""
    phrases = item_phrases(attrs)
    items = list(phrases)
    chosen = [items[i] for i in sorted(rng.choice(len(items), size=int(rng.integers(1, 4)), replace=False))]
    subject = pick(rng, (f"a {attrs.gender}", f"a {attrs.gender}", "a person"))
    parts = [f"{VERBS[item]} {phrases[item]}" for item in chosen]
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return pick(rng, PREFIXES) + subject + " " + joined


def close_up_alt_text(attrs: PersonAttributes, item: str, rng: np.random.Generator) -> str:
    """ "a red t-shirt", "close-up of gray shoes": the one item in view."""
    return pick(rng, ("", "", "close-up of ", "photo of ")) + item_phrases(attrs)[item]


def _close_up_item(attrs: PersonAttributes, rng: np.random.Generator) -> str:
    options = [item for item in CLOSE_UP_BOXES if item != "lower" or attrs.lower_type]
    return pick(rng, options)


def write_web_set(
    root: Path, *, seed: int, count: int, size: tuple[int, int], on_image: Callable[[], None]
) -> dict[str, Any]:
    """Write `count` web images with two alt-text captions each under root; returns counts."""
    image_dir = root / IMAGE_DIR
    image_dir.mkdir(parents=True)
    captions: dict[str, dict[str, str]] = {name: {} for name in WEB_FILES}
    close_ups = 0
    for index in range(count):
        name = f"{index:06d}.jpg"
        attrs = sample_attributes(stream_rng(seed, Stream.WEB_PERSON, index))
        scene = sample_scene(stream_rng(seed, Stream.WEB_SCENE, index), size)
        image = render_person(attrs, scene)
        rng = stream_rng(seed, Stream.WEB_CAPTION, index)
        if rng.random() < CLOSE_UP_SHARE:
            item = _close_up_item(attrs, rng)
            left, top, right, bottom = body_box(scene, *CLOSE_UP_BOXES[item])
            image = image.crop((left, top, right, bottom)).resize((size[1], size[0]))
            texts = [close_up_alt_text(attrs, item, rng) for _ in WEB_FILES]
            close_ups += 1
        else:
            texts = [person_alt_text(attrs, rng) for _ in WEB_FILES]
        save_jpeg(image, image_dir / name)
        for file_name, text in zip(WEB_FILES, texts, strict=True):
            captions[file_name][name] = text
        on_image()
    for file_name, mapping in captions.items():
        write_json(root / file_name, mapping)
    return {"images": count, "close_ups": close_ups, "captions": count * len(WEB_FILES)}


TOOL = "python -m data.synthetic.web"


@error_boundary
def main(argv: list[str] | None = None) -> int:
    """python -m data.synthetic.web --out DIR [--seed 0] [--images 3000] [--size 128x64] [--overwrite]"""
    import argparse
    import json

    from data.synthetic.cli import _parse_size

    parser = argparse.ArgumentParser(prog="python -m data.synthetic.web", description="The synthetic web corpus.")
    output_argument(
        parser, "--out", kind="folder", required=True, help="the corpus folder (gets imgs/, web-a.json, web-b.json)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=positive_int, default=3000)
    parser.add_argument("--size", type=_parse_size, default=(128, 64), help="HxW pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out whole")
    args = parser.parse_args(argv)
    check_output_folder(args.out, flag="--out", overwrite=args.overwrite, tool=TOOL)
    with atomic_folder(args.out, tool=TOOL) as partial:
        summary = write_web_set(partial, seed=args.seed, count=args.images, size=args.size, on_image=lambda: None)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
