"""Image transforms (torchvision v2): the reference's training augmentation (docs/method.md), resize-only for eval."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from data.config import AugmentConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATION = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


def _to_normalised_tensor() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)]


def _resize(image_size: tuple[int, int], interpolation: str) -> v2.Resize:
    # antialias: what torchvision's PIL path (the reference's Resize on PIL images) does when shrinking
    return v2.Resize(list(image_size), interpolation=INTERPOLATION[interpolation], antialias=True)


def eval_transform(image_size: tuple[int, int], interpolation: str = "bilinear") -> v2.Compose:
    """PIL image -> (3, H, W) float32, CLIP-normalised; bilinear resize as the reference's test transform."""
    return v2.Compose([_resize(image_size, interpolation), *_to_normalised_tensor()])


def train_transform(image_size: tuple[int, int], augment: AugmentConfig) -> v2.Compose:
    """Resize, random horizontal flip, pad-then-random-crop, normalise, random erasing."""
    steps: list[v2.Transform] = [_resize(image_size, augment.interpolation)]
    if augment.hflip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(augment.hflip_prob))
    if augment.crop_padding > 0:
        steps.append(v2.RandomCrop(list(image_size), padding=augment.crop_padding))
    steps += _to_normalised_tensor()
    if augment.erasing_prob > 0:
        # The reference's quirk: RandomErasing(value=mean) runs after Normalize, so the erased box holds the raw CLIP
        # mean triple (about 0.48, 0.46, 0.41) in normalised units, not the mean colour (which would be 0 here).
        value = list(CLIP_MEAN) if augment.erasing_value == "mean" else 0
        steps.append(v2.RandomErasing(p=augment.erasing_prob, scale=augment.erasing_scale, value=value))
    return v2.Compose(steps)
