"""One image of a person: the scene (placement, pose, lighting) drawn per image, the background, the figure and
the lighting applied to the finished canvas."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from data.synthetic.attributes import COLOURS, HAIR_COLOURS, RGB, SKIN_TONES, PersonAttributes
from data.synthetic.figure import BODY_SHAPES, BodyFrame, Painter, draw_figure, shade

SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges at little cost


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
    draw_figure(painter)
    return _apply_lighting(canvas.reduce(SUPERSAMPLE), scene, detail_rng)


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
            draw.line([0, y, width, y + rng.uniform(-8, 8)], fill=shade(ground, 0.8), width=2)
    elif kind == 2:  # facades with windows
        x = 0.0
        while x < width:
            facade_width = rng.uniform(0.3, 0.8) * width
            facade = _muted_colour(rng)
            draw.rectangle([x, 0, x + facade_width, height], fill=facade)
            for _ in range(int(rng.integers(2, 6))):
                wx, wy = rng.uniform(x, x + facade_width), rng.uniform(0, 0.7 * height)
                draw.rectangle([wx, wy, wx + rng.uniform(6, 14), wy + rng.uniform(8, 18)], fill=shade(facade, 0.7))
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
