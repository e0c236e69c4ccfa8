"""What a person looks like: the attribute vocabularies, PersonAttributes and how an identity is drawn."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def pick_other(rng: np.random.Generator, options: Sequence[str], excluded: str) -> str:
    return pick(rng, [option for option in options if option != excluded])


def sample_attributes(rng: np.random.Generator) -> PersonAttributes:
    gender = pick(rng, GENDERS)
    is_woman = gender == "woman"
    hair_length = "long" if rng.random() < (0.75 if is_woman else 0.15) else "short"
    upper_type = "dress" if is_woman and rng.random() < 0.15 else pick(rng, UPPER_TYPES[:-1])
    upper_colour = pick(rng, tuple(COLOURS))
    lower_type = lower_colour = None
    if upper_type != "dress":
        lower_type = pick(rng, LOWER_TYPES if is_woman else LOWER_TYPES[:-1])
        # A lower garment in the upper garment's colour would merge into one region and teach nothing.
        lower_colour = pick_other(rng, tuple(COLOURS), upper_colour)
    bag_type = pick(rng, BAG_TYPES) if rng.random() < 0.65 else None
    accessory_type = pick(rng, ACCESSORY_TYPES) if rng.random() < 0.4 else None
    return PersonAttributes(
        gender=gender,
        skin_tone=pick(rng, tuple(SKIN_TONES)),
        hair_colour=pick(rng, tuple(HAIR_COLOURS)),
        hair_length=hair_length,
        upper_type=upper_type,
        upper_colour=upper_colour,
        lower_type=lower_type,
        lower_colour=lower_colour,
        shoe_colour=pick(rng, tuple(COLOURS)),
        bag_type=bag_type,
        bag_colour=pick(rng, tuple(COLOURS)) if bag_type else None,
        accessory_type=accessory_type,
        accessory_colour=pick(rng, tuple(COLOURS)) if accessory_type else None,
    )
