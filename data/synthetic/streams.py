"""Independent random streams. Every random draw comes from a numpy Generator seeded by (seed, stream, index, ...),
so an image and its captions depend only on the seed and their own index, never on generation order or on how many
others are made."""

from __future__ import annotations

import enum

import numpy as np


class Stream(enum.IntEnum):
    """Independent random streams: changing how captions are drawn never changes an image, and vice versa."""

    PRETRAIN_PERSON = 0
    PRETRAIN_SCENE = 1
    PRETRAIN_CAPTION = 2
    CUHK_PERSON = 3
    CUHK_SCENE = 4
    CUHK_CAPTION = 5
    WEB_PERSON = 6
    WEB_SCENE = 7
    WEB_CAPTION = 8
    TARGET_PERSON = 9
    TARGET_SCENE = 10
    TARGET_CAPTION = 11


def stream_rng(seed: int, stream: Stream, *indices: int) -> np.random.Generator:
    return np.random.default_rng([seed, int(stream), *indices])
