"""Procedurally drawn pedestrians with MLLM-style captions: a small, deterministic stand-in for LUPerson-MLLM
(pretraining) and CUHK-PEDES (held-out test), so the system can be trained and evaluated end to end without the
real data (METHOD.md §1, §2, §7).

    python -m data.synthetic --out demo_data [--seed 0] [--train-images 2000] [--test-identities 100]
        [--images-per-test-identity 3] [--noise-fraction 0.15] [--dirty-fraction 0.03] [--size 128x64]

Layout written under --out:

    luperson_mllm/
        imgs/000123.jpg             one image per identity (as in LUPerson, each image is its own pid)
        Ts-qwen.json, Ts-shikra.json   {"000123.jpg": caption}: static instruction, two captioner styles
        Td-qwen.json, Td-shikra.json   dynamic instruction: one template of data/templates.py drawn per caption
        attributes.jsonl            {"image": "000123.jpg", <PersonAttributes fields>} per image
        noise_words.jsonl           one NoiseRecord per caption holding a wrong attribute word
        dirty_captions.jsonl        {"file", "image", "kind": "slot" | "markup", "marker"} per dirty caption
    cuhk_pedes/
        imgs/{train,val,test}/p0007_2.jpg
        reid_raw.json               [{"split", "captions", "file_path", "processed_tokens", "id"}], ids 1-based
        attributes.jsonl            {"id", "split", <PersonAttributes fields>} per identity

Every random draw comes from a numpy Generator seeded by (seed, stream, index, ...), so an image and its captions
depend only on the seed and their own index, never on generation order or on how many others are made.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from data.templates import (
    ACCESSORY_SLOT,
    BELONGINGS_SLOT,
    CLOTHING_SLOT,
    DYNAMIC_TEMPLATES,
    FOOTWEAR_SLOT,
    HAIR_SLOT,
    MARKUP_PATTERNS,
    PERSON_SLOT,
    SLOTS,
)

# ---------------------------------------------------------------------------------------------------------------
# Defaults and vocabulary
# ---------------------------------------------------------------------------------------------------------------

DEFAULT_TRAIN_IMAGES = 2000  # LUPerson-MLLM stand-in size; each image is one identity
DEFAULT_TEST_IDENTITIES = 100  # CUHK-PEDES test has 1,000; a tenth keeps evaluation instant
DEFAULT_IMAGES_PER_TEST_IDENTITY = 3  # CUHK-PEDES averages ~3 images per test identity
DEFAULT_NOISE_FRACTION = 0.15  # share of all captions with one wrong attribute word (what NAM should find)
DEFAULT_DIRTY_FRACTION = 0.03  # share of dynamic captions that leak a template slot or <...> markup
DEFAULT_SIZE = (128, 64)  # (H, W) pixels; the model resizes to 384x128
DEFAULT_SPLIT_IDENTITIES = 8  # identities in each of the small CUHK train and val splits

JPEG_QUALITY = 90
SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges at little cost
MAX_UNIQUE_DRAWS_PER_IDENTITY = 50  # give up drawing distinct identities after this many tries per identity

CAPTION_FILES: dict[str, tuple[str, str]] = {  # file -> (instruction, captioner), in the order written
    "Ts-qwen.json": ("static", "qwen"),
    "Ts-shikra.json": ("static", "shikra"),
    "Td-qwen.json": ("dynamic", "qwen"),
    "Td-shikra.json": ("dynamic", "shikra"),
}

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {  # garment, shoe, bag and accessory colours: saturated and far apart
    "red": (205, 30, 35),
    "blue": (30, 70, 205),
    "green": (30, 150, 55),
    "yellow": (240, 215, 40),
    "black": (25, 25, 28),
    "white": (240, 240, 240),
    "gray": (130, 130, 130),
    "orange": (245, 130, 20),
    "purple": (125, 40, 165),
    "pink": (245, 150, 195),
    "brown": (115, 70, 35),
}
HAIR_COLOURS: dict[str, RGB] = {
    "black": (20, 18, 18),
    "brown": (100, 60, 30),
    "blonde": (225, 195, 115),
    "gray": (165, 165, 165),
}
SKIN_TONES: dict[str, RGB] = {  # drawn per identity but never named in captions
    "light": (240, 205, 180),
    "medium": (205, 160, 120),
    "tan": (165, 115, 80),
    "dark": (105, 70, 50),
}
GENDERS = ("man", "woman")
HAIR_LENGTHS = ("short", "long")
UPPER_TYPES = ("t-shirt", "shirt", "jacket", "coat", "dress")
LOWER_TYPES = ("trousers", "jeans", "shorts", "skirt")
BAG_TYPES = ("backpack", "handbag", "shoulder bag")
ACCESSORY_TYPES = ("hat", "scarf")
PLURAL_NOUNS = frozenset({"trousers", "jeans", "shorts"})  # take no article: "blue jeans" but "a blue skirt"

# Every attribute that a caption names as a word, with the values a wrong word may take.
ATTRIBUTE_VOCABULARY: dict[str, tuple[str, ...]] = {
    "hair_colour": tuple(HAIR_COLOURS),
    "hair_length": HAIR_LENGTHS,
    "upper_colour": tuple(COLOURS),
    "upper_type": UPPER_TYPES,
    "lower_colour": tuple(COLOURS),
    "lower_type": LOWER_TYPES,
    "shoe_colour": tuple(COLOURS),
    "bag_colour": tuple(COLOURS),
    "bag_type": BAG_TYPES,
    "accessory_colour": tuple(COLOURS),
    "accessory_type": ACCESSORY_TYPES,
}


class SyntheticDataError(ValueError):
    """A bad argument or output directory; the message is one line saying what was expected."""


class Stream(enum.IntEnum):
    """Independent random streams: changing how captions are drawn never changes an image, and vice versa."""

    PRETRAIN_PERSON = 0
    PRETRAIN_SCENE = 1
    PRETRAIN_CAPTION = 2
    CUHK_PERSON = 3
    CUHK_SCENE = 4
    CUHK_CAPTION = 5


def stream_rng(seed: int, stream: Stream, *indices: int) -> np.random.Generator:
    return np.random.default_rng([seed, int(stream), *indices])


# ---------------------------------------------------------------------------------------------------------------
# Attributes of a person
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonAttributes:
    """What a person looks like; fixed per identity. A None type means the item is absent (a dress has no
    lower garment)."""

    gender: str
    skin_tone: str
    hair_colour: str
    hair_length: str
    upper_type: str
    upper_colour: str
    lower_type: str | None
    lower_colour: str | None
    shoe_colour: str
    bag_type: str | None
    bag_colour: str | None
    accessory_type: str | None
    accessory_colour: str | None

    def identity_key(self) -> tuple[str | None, ...]:
        """Everything a caption can name; two identities with equal keys could not be told apart by text."""
        return tuple(value for name, value in dataclasses.asdict(self).items() if name != "skin_tone")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _pick_other(rng: np.random.Generator, options: Sequence[str], excluded: str) -> str:
    return _pick(rng, [option for option in options if option != excluded])


def sample_attributes(rng: np.random.Generator) -> PersonAttributes:
    gender = _pick(rng, GENDERS)
    is_woman = gender == "woman"
    hair_length = "long" if rng.random() < (0.75 if is_woman else 0.15) else "short"
    upper_type = "dress" if is_woman and rng.random() < 0.15 else _pick(rng, UPPER_TYPES[:-1])
    upper_colour = _pick(rng, tuple(COLOURS))
    lower_type = lower_colour = None
    if upper_type != "dress":
        lower_type = _pick(rng, LOWER_TYPES if is_woman else LOWER_TYPES[:-1])
        # A lower garment in the upper garment's colour would merge into one region and teach nothing.
        lower_colour = _pick_other(rng, tuple(COLOURS), upper_colour)
    bag_type = _pick(rng, BAG_TYPES) if rng.random() < 0.65 else None
    accessory_type = _pick(rng, ACCESSORY_TYPES) if rng.random() < 0.4 else None
    return PersonAttributes(
        gender=gender,
        skin_tone=_pick(rng, tuple(SKIN_TONES)),
        hair_colour=_pick(rng, tuple(HAIR_COLOURS)),
        hair_length=hair_length,
        upper_type=upper_type,
        upper_colour=upper_colour,
        lower_type=lower_type,
        lower_colour=lower_colour,
        shoe_colour=_pick(rng, tuple(COLOURS)),
        bag_type=bag_type,
        bag_colour=_pick(rng, tuple(COLOURS)) if bag_type else None,
        accessory_type=accessory_type,
        accessory_colour=_pick(rng, tuple(COLOURS)) if accessory_type else None,
    )


# ---------------------------------------------------------------------------------------------------------------
# Scene: what varies per image of one person
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """Placement, pose and lighting of one image. Lengths are output pixels unless said otherwise."""

    size: tuple[int, int]  # (H, W)
    person_height: float  # head top to soles
    centre_x: float  # body axis
    top_y: float  # head top
    leg_spread: float  # extra half-distance between the feet, in person heights
    bag_side: int  # +1: bag on the image's right, -1: left
    brightness: float  # added to every channel, 0..255 units
    contrast: float  # scales distance from mid-gray
    tint: tuple[float, float, float]  # per-channel gain: a colour cast from the light source
    sensor_noise: float  # std of per-pixel Gaussian noise
    detail_seed: int  # background texture and small colour jitter of the garments


def sample_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    height, width = size
    person_height = rng.uniform(0.78, 0.95) * height
    return Scene(
        size=size,
        person_height=person_height,
        centre_x=width / 2 + rng.uniform(-0.12, 0.12) * width,
        top_y=rng.uniform(0.01 * height, height - person_height - 0.005 * height),
        leg_spread=rng.uniform(0.0, 0.06),
        bag_side=1 if rng.random() < 0.5 else -1,
        brightness=rng.uniform(-25.0, 25.0),
        contrast=rng.uniform(0.8, 1.15),
        tint=tuple(float(gain) for gain in rng.uniform(0.93, 1.07, size=3)),
        sensor_noise=rng.uniform(0.0, 6.0),
        detail_seed=int(rng.integers(2**31)),
    )


def body_box(scene: Scene, left_u: float, top_v: float, right_u: float, bottom_v: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) output pixels of a box given in body units: u across the body axis and v down
    from the head top, both in person heights (the units the figure is drawn in)."""
    left, top = scene.centre_x + left_u * scene.person_height, scene.top_y + top_v * scene.person_height
    right, bottom = scene.centre_x + right_u * scene.person_height, scene.top_y + bottom_v * scene.person_height
    return round(left), round(top), round(right), round(bottom)


def upper_garment_box(scene: Scene) -> tuple[int, int, int, int]:
    """A chest patch covered by the upper garment and by nothing else when the person has no bag (long hair,
    scarf and backpack straps stay outside it)."""
    return body_box(scene, -0.035, 0.24, 0.035, 0.42)


# ---------------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------------

# Vertical landmarks in person heights from the head top: the figure is drawn in body units (u across the axis,
# v down from the head top) so that scale and shift are one mapping.
SHOULDER_V = 0.165
HAND_V = 0.48
WAIST_V = 0.50
ANKLE_V = 0.94
SOLE_V = 0.995


@dataclass(frozen=True)
class BodyShape:
    shoulder: float  # half-widths in person heights
    waist: float
    hip: float


BODY_SHAPES = {"man": BodyShape(shoulder=0.12, waist=0.085, hip=0.085), "woman": BodyShape(0.105, 0.075, 0.095)}


@dataclass(frozen=True)
class BodyFrame:
    """Maps body units to canvas pixels."""

    centre_x: float
    top_y: float
    height: float

    def point(self, u: float, v: float) -> tuple[float, float]:
        return self.centre_x + u * self.height, self.top_y + v * self.height

    def polygon(self, points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        return [self.point(u, v) for u, v in points]

    def box(self, u0: float, v0: float, u1: float, v1: float) -> list[float]:
        (x0, y0), (x1, y1) = self.point(min(u0, u1), v0), self.point(max(u0, u1), v1)
        return [x0, y0, x1, y1]

    def pixels(self, length: float) -> int:
        return max(1, round(length * self.height))


@dataclass
class Painter:
    """One figure on one canvas: body frame, shape, pose and the (jittered) colours of its parts."""

    draw: ImageDraw.ImageDraw
    frame: BodyFrame
    shape: BodyShape
    attrs: PersonAttributes
    palette: dict[str, RGB]
    leg_spread: float
    bag_side: int

    def fill(self, points: Sequence[tuple[float, float]], part: str) -> None:
        colour = self.palette[part]
        self.draw.polygon(self.frame.polygon(points), fill=colour, outline=_shade(colour, 0.6))

    def ellipse(self, box: tuple[float, float, float, float], part: str) -> None:
        colour = self.palette[part]
        self.draw.ellipse(self.frame.box(*box), fill=colour, outline=_shade(colour, 0.6))

    def line(self, points: Sequence[tuple[float, float]], colour: RGB, width: float) -> None:
        self.draw.line(self.frame.polygon(points), fill=colour, width=self.frame.pixels(width))


def draw_person(attrs: PersonAttributes, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One image of `attrs` at (H, W) `size`, with background, placement, pose and lighting drawn from `rng`."""
    return render_person(attrs, sample_scene(rng, size))


def render_person(attrs: PersonAttributes, scene: Scene) -> Image.Image:
    """Pure: the same attributes and scene give the same pixels."""
    detail_rng = np.random.default_rng(scene.detail_seed)
    height, width = scene.size
    canvas = Image.new("RGB", (width * SUPERSAMPLE, height * SUPERSAMPLE))
    draw = ImageDraw.Draw(canvas)
    _draw_background(draw, detail_rng, canvas.size)
    painter = Painter(
        draw=draw,
        frame=BodyFrame(scene.centre_x * SUPERSAMPLE, scene.top_y * SUPERSAMPLE, scene.person_height * SUPERSAMPLE),
        shape=BODY_SHAPES[attrs.gender],
        attrs=attrs,
        palette=_jittered_palette(attrs, detail_rng),
        leg_spread=scene.leg_spread,
        bag_side=scene.bag_side,
    )
    _draw_figure(painter)
    return _apply_lighting(canvas.reduce(SUPERSAMPLE), scene, detail_rng)


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(min(255, round(channel * factor)) for channel in colour)


def _jittered_palette(attrs: PersonAttributes, rng: np.random.Generator) -> dict[str, RGB]:
    """Colours of the figure's parts, each shifted a little so that one colour name covers a range of pixels."""
    named = {
        "skin": SKIN_TONES[attrs.skin_tone],
        "hair": HAIR_COLOURS[attrs.hair_colour],
        "upper": COLOURS[attrs.upper_colour],
        "lower": COLOURS[attrs.lower_colour or attrs.upper_colour],
        "shoes": COLOURS[attrs.shoe_colour],
        "bag": COLOURS[attrs.bag_colour or "black"],
        "accessory": COLOURS[attrs.accessory_colour or "black"],
    }
    return {
        part: tuple(int(np.clip(channel + rng.integers(-12, 13), 0, 255)) for channel in colour)
        for part, colour in named.items()
    }


def _muted_colour(rng: np.random.Generator) -> RGB:
    """A low-saturation colour, so that backgrounds never compete with the named garment colours."""
    base = rng.uniform(50, 210, size=3)
    grey = base.mean()
    return tuple(int(c) for c in grey + (base - grey) * rng.uniform(0.1, 0.45))


def _draw_background(draw: ImageDraw.ImageDraw, rng: np.random.Generator, canvas_size: tuple[int, int]) -> None:
    width, height = canvas_size
    draw.rectangle([0, 0, width, height], fill=_muted_colour(rng))
    kind = int(rng.integers(4))
    if kind == 1:  # street: a ground plane below a horizon, with paving lines
        horizon = rng.uniform(0.55, 0.85) * height
        ground = _muted_colour(rng)
        draw.rectangle([0, horizon, width, height], fill=ground)
        for _ in range(int(rng.integers(1, 4))):
            y = rng.uniform(horizon, height)
            draw.line([0, y, width, y + rng.uniform(-8, 8)], fill=_shade(ground, 0.8), width=2)
    elif kind == 2:  # facades with windows
        x = 0.0
        while x < width:
            facade_width = rng.uniform(0.3, 0.8) * width
            facade = _muted_colour(rng)
            draw.rectangle([x, 0, x + facade_width, height], fill=facade)
            for _ in range(int(rng.integers(2, 6))):
                wx, wy = rng.uniform(x, x + facade_width), rng.uniform(0, 0.7 * height)
                draw.rectangle([wx, wy, wx + rng.uniform(6, 14), wy + rng.uniform(8, 18)], fill=_shade(facade, 0.7))
            x += facade_width
    elif kind == 3:  # horizontal bands: fences, walls, crossings
        y = 0.0
        while y < height:
            band = rng.uniform(0.05, 0.25) * height
            draw.rectangle([0, y, width, y + band], fill=_muted_colour(rng))
            y += band
    for _ in range(int(rng.integers(0, 5))):  # clutter
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(4, 20)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r * rng.uniform(0.5, 2.0)], fill=_muted_colour(rng))


def _apply_lighting(image: Image.Image, scene: Scene, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    pixels = (pixels - 128.0) * scene.contrast + 128.0 + scene.brightness
    pixels *= np.asarray(scene.tint, dtype=np.float32)
    pixels += rng.normal(0.0, scene.sensor_noise, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _draw_figure(painter: Painter) -> None:
    """Back to front: what is drawn later covers what is drawn earlier."""
    attrs = painter.attrs
    if attrs.bag_type == "backpack":
        _draw_backpack_body(painter)
    if attrs.hair_length == "long":
        _draw_hair_behind_head(painter)
    _draw_legs_and_lower_garment(painter)
    _draw_shoes(painter)
    _draw_torso(painter)
    _draw_head(painter)
    _draw_arms(painter)
    if attrs.hair_length == "long":
        _draw_hair_over_shoulders(painter)
    if attrs.accessory_type == "scarf":
        _draw_scarf(painter)
    if attrs.accessory_type == "hat":
        _draw_hat(painter)
    if attrs.bag_type == "backpack":
        _draw_backpack_straps(painter)
    elif attrs.bag_type == "shoulder bag":
        _draw_shoulder_bag(painter)
    elif attrs.bag_type == "handbag":
        _draw_handbag(painter)


def _foot_u(painter: Painter, side: int) -> float:
    return side * (0.045 + painter.leg_spread)


def _leg_polygon(painter: Painter, side: int, v_from: float, v_to: float) -> list[tuple[float, float]]:
    """One leg between two heights: from the hip (inner edge at the axis) to the ankle (above the foot)."""
    foot = _foot_u(painter, side)
    top_inner, top_outer = side * 0.004, side * painter.shape.hip
    bottom_inner, bottom_outer = foot - side * 0.032, foot + side * 0.032

    def edge(top: float, bottom: float, v: float) -> float:
        return top + (bottom - top) * (v - WAIST_V) / (ANKLE_V - WAIST_V)

    return [
        (edge(top_inner, bottom_inner, v_from), v_from),
        (edge(top_outer, bottom_outer, v_from), v_from),
        (edge(top_outer, bottom_outer, v_to), v_to),
        (edge(top_inner, bottom_inner, v_to), v_to),
    ]


def _draw_legs_and_lower_garment(painter: Painter) -> None:
    lower_type, hip = painter.attrs.lower_type, painter.shape.hip
    for side in (-1, 1):
        painter.fill(_leg_polygon(painter, side, WAIST_V, ANKLE_V), "skin")
    if lower_type in ("trousers", "jeans", "shorts"):
        leg_end = 0.70 if lower_type == "shorts" else ANKLE_V
        for side in (-1, 1):
            painter.fill(_leg_polygon(painter, side, WAIST_V, leg_end), "lower")
        painter.fill([(-hip, WAIST_V), (hip, WAIST_V), (hip * 0.8, 0.57), (-hip * 0.8, 0.57)], "lower")
        _draw_lower_garment_details(painter, leg_end)
    elif lower_type == "skirt":
        painter.fill([(-hip, 0.49), (hip, 0.49), (hip + 0.055, 0.73), (-hip - 0.055, 0.73)], "lower")


def _draw_lower_garment_details(painter: Painter, leg_end: float) -> None:
    """Jeans get light outer seams and pockets, trousers a dark crease: the two differ in more than the word."""
    lower = painter.palette["lower"]
    for side in (-1, 1):
        (inner_top, _), (outer_top, _), (outer_bottom, _), (inner_bottom, _) = _leg_polygon(
            painter, side, WAIST_V, leg_end
        )
        if painter.attrs.lower_type == "jeans":
            seam = _shade(lower, 1.45) if sum(lower) < 300 else _shade(lower, 0.7)
            painter.line([(outer_top * 0.85, WAIST_V + 0.01), (outer_bottom * 0.92, leg_end)], seam, 0.008)
            painter.line([(side * 0.02, WAIST_V + 0.02), (side * 0.055, 0.56)], seam, 0.006)
        elif painter.attrs.lower_type == "trousers":
            crease = _shade(lower, 0.65)
            painter.line(
                [((inner_top + outer_top) / 2, 0.56), ((inner_bottom + outer_bottom) / 2, leg_end)], crease, 0.006
            )


def _draw_shoes(painter: Painter) -> None:
    for side in (-1, 1):
        foot = _foot_u(painter, side)
        painter.ellipse((foot - 0.04 + side * 0.008, 0.93, foot + 0.04 + side * 0.008, SOLE_V), "shoes")


def _draw_torso(painter: Painter) -> None:
    """The upper garment: its type sets its length and its details."""
    upper_type, shape = painter.attrs.upper_type, painter.shape
    shoulder, waist, hip = shape.shoulder, shape.waist, shape.hip
    hem_v, hem_u = 0.53, hip + 0.005
    if upper_type == "coat":
        hem_v, hem_u = 0.68, hip + 0.04
    elif upper_type == "dress":
        hem_v, hem_u = 0.72, hip + 0.06
    # A coat opens below the waist (a notch in the hem), so that what is worn under it stays visible.
    hem_notch = [(0.05, hem_v), (0.0, WAIST_V), (-0.05, hem_v)] if upper_type == "coat" else []
    outline = [
        (-shoulder + 0.02, SHOULDER_V),
        (shoulder - 0.02, SHOULDER_V),
        (shoulder, SHOULDER_V + 0.012),
        (waist, 0.40),
        (hem_u, hem_v),
        *hem_notch,
        (-hem_u, hem_v),
        (-waist, 0.40),
        (-shoulder, SHOULDER_V + 0.012),
    ]
    painter.fill(outline, "upper")
    upper = painter.palette["upper"]
    dark, light = _shade(upper, 0.55), _shade(upper, 1.35) if sum(upper) < 500 else _shade(upper, 0.8)
    if upper_type in ("coat", "jacket"):  # front opening with buttons or a zip
        painter.line([(0.0, SHOULDER_V + 0.03), (0.0, WAIST_V if upper_type == "coat" else hem_v)], dark, 0.008)
        painter.fill([(-0.045, SHOULDER_V), (0.0, SHOULDER_V + 0.05), (0.045, SHOULDER_V)], "upper")
        painter.line([(-0.045, SHOULDER_V), (0.0, SHOULDER_V + 0.05), (0.045, SHOULDER_V)], light, 0.01)
    elif upper_type == "shirt":  # collar and a button placket
        painter.line([(-0.035, SHOULDER_V), (0.0, SHOULDER_V + 0.03), (0.035, SHOULDER_V)], light, 0.014)
        for v in (0.24, 0.31, 0.38, 0.45):
            painter.ellipse((-0.006, v, 0.006, v + 0.012), "upper")
    if upper_type == "dress":  # a belt line marks where the skirt flares
        painter.line([(-waist, WAIST_V - 0.05), (waist, WAIST_V - 0.05)], dark, 0.008)


def _draw_head(painter: Painter) -> None:
    painter.fill([(-0.022, 0.12), (0.022, 0.12), (0.022, SHOULDER_V + 0.01), (-0.022, SHOULDER_V + 0.01)], "skin")
    painter.ellipse((-0.048, 0.02, 0.048, 0.14), "skin")
    painter.ellipse((-0.053, 0.008, 0.053, 0.085), "hair")  # the hair cap; long hair adds more around it
    painter.fill([(-0.053, 0.05), (-0.04, 0.05), (-0.043, 0.095), (-0.052, 0.09)], "hair")
    painter.fill([(0.053, 0.05), (0.04, 0.05), (0.043, 0.095), (0.052, 0.09)], "hair")


def _draw_hair_behind_head(painter: Painter) -> None:
    painter.fill([(-0.06, 0.04), (0.06, 0.04), (0.07, 0.29), (-0.07, 0.29)], "hair")


def _draw_hair_over_shoulders(painter: Painter) -> None:
    for side in (-1, 1):
        painter.fill(
            [(side * 0.045, 0.08), (side * 0.062, 0.06), (side * 0.075, 0.29), (side * 0.045, 0.28)],
            "hair",
        )


def _arm_polygon(painter: Painter, side: int, v_from: float, v_to: float) -> list[tuple[float, float]]:
    """An arm hanging slightly away from the body, between two heights."""
    shoulder = painter.shape.shoulder
    top_inner, top_outer = side * (shoulder - 0.03), side * (shoulder + 0.015)
    bottom_inner, bottom_outer = side * (shoulder + 0.005), side * (shoulder + 0.05)

    def edge(top: float, bottom: float, v: float) -> float:
        return top + (bottom - top) * (v - SHOULDER_V) / (HAND_V - SHOULDER_V)

    return [
        (edge(top_inner, bottom_inner, v_from), v_from),
        (edge(top_outer, bottom_outer, v_from), v_from),
        (edge(top_outer, bottom_outer, v_to), v_to),
        (edge(top_inner, bottom_inner, v_to), v_to),
    ]


def _draw_arms(painter: Painter) -> None:
    short_sleeves = painter.attrs.upper_type in ("t-shirt", "dress")
    sleeve_end = 0.27 if short_sleeves else HAND_V - 0.01
    shoulder = painter.shape.shoulder
    for side in (-1, 1):
        painter.fill(_arm_polygon(painter, side, SHOULDER_V + 0.005, HAND_V), "skin")
        painter.fill(_arm_polygon(painter, side, SHOULDER_V + 0.005, sleeve_end), "upper")
        hand_u = side * (shoulder + 0.028)
        painter.ellipse((hand_u - 0.022, HAND_V - 0.005, hand_u + 0.022, HAND_V + 0.045), "skin")


def _draw_scarf(painter: Painter) -> None:
    painter.fill([(-0.05, 0.145), (0.05, 0.145), (0.055, 0.205), (-0.055, 0.205)], "accessory")
    end_u = -painter.bag_side * 0.06  # the loose end hangs on the side away from the bag
    painter.fill([(end_u - 0.017, 0.2), (end_u + 0.017, 0.2), (end_u + 0.02, 0.33), (end_u - 0.02, 0.33)], "accessory")


def _draw_hat(painter: Painter) -> None:
    # Sits high enough that a band of hair shows below it: the hair colour must stay visible.
    painter.ellipse((-0.056, -0.012, 0.056, 0.06), "accessory")
    brim_side = painter.bag_side
    painter.fill(
        [(-0.058, 0.035), (0.058, 0.035), (0.058 + brim_side * 0.025, 0.05), (-0.058 + brim_side * 0.025, 0.05)],
        "accessory",
    )


def _draw_backpack_body(painter: Painter) -> None:
    """Behind the figure; the part beside the arm is what shows."""
    side, shoulder = painter.bag_side, painter.shape.shoulder
    body = painter.frame.box(side * (shoulder + 0.02), 0.18, side * (shoulder + 0.1), 0.46)
    colour = painter.palette["bag"]
    painter.draw.rounded_rectangle(body, radius=painter.frame.pixels(0.02), fill=colour, outline=_shade(colour, 0.6))


def _draw_backpack_straps(painter: Painter) -> None:
    for side in (-1, 1):
        painter.fill(
            [(side * 0.06, SHOULDER_V), (side * 0.085, SHOULDER_V), (side * 0.085, 0.40), (side * 0.06, 0.40)],
            "bag",
        )


def _draw_shoulder_bag(painter: Painter) -> None:
    side, shoulder, hip = painter.bag_side, painter.shape.shoulder, painter.shape.hip
    painter.line(
        [(-side * (shoulder - 0.03), SHOULDER_V + 0.005), (side * (hip + 0.04), 0.46)], painter.palette["bag"], 0.018
    )
    painter.fill(
        [
            (side * (hip - 0.005), 0.45),
            (side * (hip + 0.09), 0.45),
            (side * (hip + 0.09), 0.565),
            (side * (hip - 0.005), 0.565),
        ],
        "bag",
    )


def _draw_handbag(painter: Painter) -> None:
    side, shoulder = painter.bag_side, painter.shape.shoulder
    hand_u = side * (shoulder + 0.028)
    painter.line(
        [(hand_u - 0.025, 0.54), (hand_u, HAND_V + 0.02), (hand_u + 0.025, 0.54)], painter.palette["bag"], 0.01
    )
    painter.fill(
        [(hand_u - 0.045, 0.535), (hand_u + 0.045, 0.535), (hand_u + 0.055, 0.64), (hand_u - 0.055, 0.64)],
        "bag",
    )


# ---------------------------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------------------------


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

SLOT_PATTERN = re.compile("(" + "|".join(re.escape(slot) for slot in SLOTS) + ")")
DIRTY_PATTERN = re.compile(r"\[[^\[\]]* description\]|\[person/woman/man\]|<[^<>]+>")
TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


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


@dataclass(frozen=True)
class Caption:
    text: str
    noise: NoiseRecord | None  # file and image left empty until the caption is placed in a file
    dirt: Dirt | None


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


def _draw_dirt(template: str, attrs: PersonAttributes, rng: np.random.Generator) -> Dirt:
    if rng.random() < 2 / 3:
        unfilled = [slot for slot in SLOTS if slot != PERSON_SLOT and slot in template]
        return Dirt("slot", _pick(rng, unfilled))
    pattern = _pick(rng, MARKUP_PATTERNS)
    x0, y0 = rng.integers(0, 300, size=2)
    x1, y1 = rng.integers(700, 1000, size=2)
    return Dirt("markup", pattern.format(person=attrs.gender, box=f"({x0},{y0}),({x1},{y1})"))


def _replace_attribute_word(pieces: list[Piece], rng: np.random.Generator) -> tuple[list[Piece], int] | None:
    """The pieces with one attribute word swapped for a wrong value of the same kind, and that piece's index."""
    candidates = [index for index, piece in enumerate(pieces) if isinstance(piece, AttributeWord)]
    if not candidates:
        return None
    index = candidates[int(rng.integers(len(candidates)))]
    word = pieces[index]
    wrong = _pick_other(rng, ATTRIBUTE_VOCABULARY[word.attribute], word.value)
    return [*pieces[:index], AttributeWord(word.attribute, wrong), *pieces[index + 1 :]], index


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
            dirt = _draw_dirt(template, attrs, rng)
        pieces = fill_template(template, slot_fillers(attrs, captioner), dirt=dirt)
    original = pieces
    replaced = _replace_attribute_word(pieces, rng) if rng.random() < noise_fraction else None
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
            word_index=_word_index(text, start),
            char_start=start,
            char_end=end,
            wrong=pieces[index].value,
            correct=original[index].value,
            attribute=pieces[index].attribute,
            num_words=len(pieces[index].value.split()),
        )
    return Caption(text=text, noise=noise, dirt=dirt)


def _word_index(text: str, char_start: int) -> int:
    """Index in text.split() of the word holding char_start."""
    before = text[:char_start]
    words_before = len(before.split())
    starts_new_word = not before or before[-1].isspace()
    return words_before if starts_new_word else words_before - 1


def is_dirty(caption: str) -> bool:
    """True for a caption holding a template slot or <...> markup (what the loader replaces, METHOD.md §1)."""
    return DIRTY_PATTERN.search(caption) is not None


def processed_tokens(caption: str) -> list[str]:
    """CUHK-PEDES style word tokens: lower case, punctuation dropped, hyphenated words kept whole."""
    return TOKEN_PATTERN.findall(caption.lower())


# ---------------------------------------------------------------------------------------------------------------
# Writing the two datasets
# ---------------------------------------------------------------------------------------------------------------

PRETRAIN_DIR = "luperson_mllm"
CUHK_DIR = "cuhk_pedes"
IMAGE_DIR = "imgs"


def _save_jpeg(image: Image.Image, path: Path) -> None:
    # 4:4:4 chroma: at 64 px wide, subsampled chroma would smear the small bag and shoe colours
    image.save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def pretraining_image_name(index: int, count: int) -> str:
    return f"{index:0{max(6, len(str(count - 1)))}d}.jpg"


def _write_pretraining_set(
    root: Path,
    *,
    seed: int,
    count: int,
    size: tuple[int, int],
    noise_fraction: float,
    dirty_fraction: float,
    on_image: Callable[[], None],
) -> dict[str, Any]:
    image_dir = root / IMAGE_DIR
    image_dir.mkdir(parents=True)
    captions: dict[str, dict[str, str]] = {name: {} for name in CAPTION_FILES}
    attribute_rows, noise_rows, dirt_rows = [], [], []
    for index in range(count):
        name = pretraining_image_name(index, count)
        attrs = sample_attributes(stream_rng(seed, Stream.PRETRAIN_PERSON, index))
        _save_jpeg(draw_person(attrs, stream_rng(seed, Stream.PRETRAIN_SCENE, index), size), image_dir / name)
        attribute_rows.append({"image": name, **dataclasses.asdict(attrs)})
        for file_index, (file_name, (instruction, captioner)) in enumerate(CAPTION_FILES.items()):
            caption = make_caption(
                attrs,
                instruction=instruction,
                captioner=captioner,
                rng=stream_rng(seed, Stream.PRETRAIN_CAPTION, index, file_index),
                noise_fraction=noise_fraction,
                dirty_fraction=dirty_fraction,
            )
            captions[file_name][name] = caption.text
            if caption.noise is not None:
                noise_rows.append(dataclasses.asdict(dataclasses.replace(caption.noise, file=file_name, image=name)))
            if caption.dirt is not None:
                dirt_rows.append({"file": file_name, "image": name, **dataclasses.asdict(caption.dirt)})
        on_image()
    for file_name, mapping in captions.items():
        _write_json(root / file_name, mapping)
    _write_jsonl(root / "attributes.jsonl", attribute_rows)
    _write_jsonl(root / "noise_words.jsonl", noise_rows)
    _write_jsonl(root / "dirty_captions.jsonl", dirt_rows)
    caption_count = count * len(CAPTION_FILES)
    dynamic_count = count * sum(instruction == "dynamic" for instruction, _ in CAPTION_FILES.values())
    return {
        "images": count,
        "captions": caption_count,
        "noisy_captions": len(noise_rows),
        "noise_fraction": round(len(noise_rows) / caption_count, 4),
        "dirty_captions": len(dirt_rows),
        "dirty_fraction": round(len(dirt_rows) / dynamic_count, 4),
        "templates": len(DYNAMIC_TEMPLATES),
    }


def draw_distinct_identities(seed: int, count: int) -> list[PersonAttributes]:
    """`count` identities whose captionable attributes all differ, from the CUHK person stream."""
    identities: list[PersonAttributes] = []
    seen: set[tuple[str | None, ...]] = set()
    for draw_index in range(count * MAX_UNIQUE_DRAWS_PER_IDENTITY):
        attrs = sample_attributes(stream_rng(seed, Stream.CUHK_PERSON, draw_index))
        if attrs.identity_key() not in seen:
            seen.add(attrs.identity_key())
            identities.append(attrs)
            if len(identities) == count:
                return identities
    raise SyntheticDataError(f"could not draw {count} distinct identities; ask for fewer test/train/val identities")


def _clean_caption_pair(attrs: PersonAttributes, rng: np.random.Generator) -> list[str]:
    """Two clean captions in two different (instruction, captioner) styles, as CUHK-PEDES has two per image."""
    styles = list(CAPTION_FILES.values())
    first, second = rng.choice(len(styles), size=2, replace=False)
    return [
        make_caption(attrs, instruction=styles[i][0], captioner=styles[i][1], rng=rng).text for i in (first, second)
    ]


def _write_cuhk_set(
    root: Path,
    *,
    seed: int,
    identities_per_split: dict[str, int],
    images_per_identity: int,
    size: tuple[int, int],
    on_image: Callable[[], None],
) -> dict[str, Any]:
    # Test identities are drawn first so that the test set does not change with the train/val sizes.
    draw_order = ("test", "val", "train")
    drawn = draw_distinct_identities(seed, sum(identities_per_split.values()))
    by_split, offset = {}, 0
    for split in draw_order:
        by_split[split] = drawn[offset : offset + identities_per_split[split]]
        offset += identities_per_split[split]
    entries, attribute_rows, summary = [], [], {}
    next_id = 1  # CUHK-PEDES ids are 1-based and unique across splits, train first
    for split_code, split in enumerate(("train", "val", "test")):
        (root / IMAGE_DIR / split).mkdir(parents=True)
        for identity_index, attrs in enumerate(by_split[split]):
            person_id = next_id
            next_id += 1
            attribute_rows.append({"id": person_id, "split": split, **dataclasses.asdict(attrs)})
            for image_index in range(images_per_identity):
                file_path = f"{split}/p{person_id:04d}_{image_index}.jpg"
                scene_rng = stream_rng(seed, Stream.CUHK_SCENE, split_code, identity_index, image_index)
                _save_jpeg(draw_person(attrs, scene_rng, size), root / IMAGE_DIR / file_path)
                caption_rng = stream_rng(seed, Stream.CUHK_CAPTION, split_code, identity_index, image_index)
                captions = _clean_caption_pair(attrs, caption_rng)
                entries.append(
                    {
                        "split": split,
                        "captions": captions,
                        "file_path": file_path,
                        "processed_tokens": [processed_tokens(caption) for caption in captions],
                        "id": person_id,
                    }
                )
                on_image()
        images = len(by_split[split]) * images_per_identity
        summary[split] = {"ids": len(by_split[split]), "images": images, "captions": 2 * images}
    _write_json(root / "reid_raw.json", entries)
    _write_jsonl(root / "attributes.jsonl", attribute_rows)
    return summary


def _prepare_output(out_dir: Path, *, overwrite: bool) -> None:
    for name in (PRETRAIN_DIR, CUHK_DIR):
        target = out_dir / name
        if target.exists() and any(target.iterdir()):
            if not overwrite:
                raise SyntheticDataError(f"{target} already exists and is not empty; pass overwrite=True (--overwrite)")
            shutil.rmtree(target)
    out_dir.mkdir(parents=True, exist_ok=True)


def _validate(
    *,
    train_images: int,
    test_identities: int,
    images_per_test_identity: int,
    noise_fraction: float,
    dirty_fraction: float,
    size: tuple[int, int],
    split_identities: int,
) -> None:
    counts = {
        "train_images": train_images,
        "test_identities": test_identities,
        "images_per_test_identity": images_per_test_identity,
        "split_identities": split_identities,
    }
    for name, value in counts.items():
        if value < 1:
            raise SyntheticDataError(f"{name} must be >= 1 (got {value})")
    for name, value in {"noise_fraction": noise_fraction, "dirty_fraction": dirty_fraction}.items():
        if not 0.0 <= value <= 1.0:
            raise SyntheticDataError(f"{name} must be in [0, 1] (got {value})")
    if size[0] < 32 or size[1] < 16:
        raise SyntheticDataError(f"size must be at least 32x16 (HxW) pixels (got {size[0]}x{size[1]})")


def generate(
    out_dir: str | Path,
    *,
    seed: int = 0,
    train_images: int = DEFAULT_TRAIN_IMAGES,
    test_identities: int = DEFAULT_TEST_IDENTITIES,
    images_per_test_identity: int = DEFAULT_IMAGES_PER_TEST_IDENTITY,
    noise_fraction: float = DEFAULT_NOISE_FRACTION,
    dirty_fraction: float = DEFAULT_DIRTY_FRACTION,
    size: tuple[int, int] = DEFAULT_SIZE,
    split_identities: int = DEFAULT_SPLIT_IDENTITIES,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the pretraining set under out_dir/luperson_mllm and the CUHK-PEDES-style set under out_dir/cuhk_pedes
    (layout in the module docstring) and return a summary of counts. `split_identities` sizes the small CUHK
    train and val splits; their images per identity follow the test split's."""
    _validate(
        train_images=train_images,
        test_identities=test_identities,
        images_per_test_identity=images_per_test_identity,
        noise_fraction=noise_fraction,
        dirty_fraction=dirty_fraction,
        size=size,
        split_identities=split_identities,
    )
    out_dir = Path(out_dir).expanduser()
    _prepare_output(out_dir, overwrite=overwrite)
    identities_per_split = {"train": split_identities, "val": split_identities, "test": test_identities}
    total_images = train_images + sum(identities_per_split.values()) * images_per_test_identity
    with tqdm(total=total_images, unit="img", desc="synthetic", disable=not progress) as bar:
        pretraining = _write_pretraining_set(
            out_dir / PRETRAIN_DIR,
            seed=seed,
            count=train_images,
            size=size,
            noise_fraction=noise_fraction,
            dirty_fraction=dirty_fraction,
            on_image=bar.update,
        )
        cuhk = _write_cuhk_set(
            out_dir / CUHK_DIR,
            seed=seed,
            identities_per_split=identities_per_split,
            images_per_identity=images_per_test_identity,
            size=size,
            on_image=bar.update,
        )
    return {
        "out_dir": str(out_dir),
        "seed": seed,
        "size": list(size),
        PRETRAIN_DIR: pretraining,
        CUHK_DIR: cuhk,
        "images": total_images,
    }


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected HxW such as 128x64 (got {text!r})")
    return int(match.group(1)), int(match.group(2))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory (gets luperson_mllm/ and cuhk_pedes/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=DEFAULT_TRAIN_IMAGES)
    parser.add_argument("--test-identities", type=int, default=DEFAULT_TEST_IDENTITIES)
    parser.add_argument("--images-per-test-identity", type=int, default=DEFAULT_IMAGES_PER_TEST_IDENTITY)
    parser.add_argument("--noise-fraction", type=float, default=DEFAULT_NOISE_FRACTION)
    parser.add_argument("--dirty-fraction", type=float, default=DEFAULT_DIRTY_FRACTION)
    parser.add_argument("--size", type=_parse_size, default=DEFAULT_SIZE, help="HxW pixels (default 128x64)")
    parser.add_argument("--split-identities", type=int, default=DEFAULT_SPLIT_IDENTITIES, help="CUHK train/val ids")
    parser.add_argument("--overwrite", action="store_true", help="replace existing luperson_mllm/ and cuhk_pedes/")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        summary = generate(
            args.out,
            seed=args.seed,
            train_images=args.train_images,
            test_identities=args.test_identities,
            images_per_test_identity=args.images_per_test_identity,
            noise_fraction=args.noise_fraction,
            dirty_fraction=args.dirty_fraction,
            size=args.size,
            split_identities=args.split_identities,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (SyntheticDataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print(json.dumps(summary, indent=2))
    print(
        f"{summary['images']} images in {seconds:.1f} s: {summary['images'] / seconds * 60:,.0f} images/minute (one process)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
