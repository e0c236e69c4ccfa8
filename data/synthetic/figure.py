"""The figure: a pedestrian drawn as polygons in body units, part by part from back to front."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import ImageDraw

from data.synthetic.attributes import RGB, PersonAttributes

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
        self.draw.polygon(self.frame.polygon(points), fill=colour, outline=shade(colour, 0.6))

    def ellipse(self, box: tuple[float, float, float, float], part: str) -> None:
        colour = self.palette[part]
        self.draw.ellipse(self.frame.box(*box), fill=colour, outline=shade(colour, 0.6))

    def line(self, points: Sequence[tuple[float, float]], colour: RGB, width: float) -> None:
        self.draw.line(self.frame.polygon(points), fill=colour, width=self.frame.pixels(width))


def shade(colour: RGB, factor: float) -> RGB:
    return tuple(min(255, round(channel * factor)) for channel in colour)


def draw_figure(painter: Painter) -> None:
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


def _limb_polygon(
    *, inner: tuple[float, float], outer: tuple[float, float], v_top: float, v_bottom: float, v_from: float, v_to: float
) -> list[tuple[float, float]]:
    """A tapered limb between heights v_from and v_to. Its inner and outer edges run straight from their
    (top, bottom) u at v_top to v_bottom."""

    def edge(u: tuple[float, float], v: float) -> float:
        top, bottom = u
        return top + (bottom - top) * (v - v_top) / (v_bottom - v_top)

    return [
        (edge(inner, v_from), v_from),
        (edge(outer, v_from), v_from),
        (edge(outer, v_to), v_to),
        (edge(inner, v_to), v_to),
    ]


def _leg_polygon(painter: Painter, side: int, v_from: float, v_to: float) -> list[tuple[float, float]]:
    """One leg between two heights: from the hip (inner edge at the axis) to the ankle (above the foot)."""
    foot = _foot_u(painter, side)
    return _limb_polygon(
        inner=(side * 0.004, foot - side * 0.032),
        outer=(side * painter.shape.hip, foot + side * 0.032),
        v_top=WAIST_V,
        v_bottom=ANKLE_V,
        v_from=v_from,
        v_to=v_to,
    )


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
            seam = shade(lower, 1.45) if sum(lower) < 300 else shade(lower, 0.7)
            painter.line([(outer_top * 0.85, WAIST_V + 0.01), (outer_bottom * 0.92, leg_end)], seam, 0.008)
            painter.line([(side * 0.02, WAIST_V + 0.02), (side * 0.055, 0.56)], seam, 0.006)
        elif painter.attrs.lower_type == "trousers":
            crease = shade(lower, 0.65)
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
    dark, light = shade(upper, 0.55), shade(upper, 1.35) if sum(upper) < 500 else shade(upper, 0.8)
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
    return _limb_polygon(
        inner=(side * (shoulder - 0.03), side * (shoulder + 0.005)),
        outer=(side * (shoulder + 0.015), side * (shoulder + 0.05)),
        v_top=SHOULDER_V,
        v_bottom=HAND_V,
        v_from=v_from,
        v_to=v_to,
    )


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
    painter.draw.rounded_rectangle(body, radius=painter.frame.pixels(0.02), fill=colour, outline=shade(colour, 0.6))


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
