"""Image transforms (torchvision v2): METHOD.md §6 augmentation for training, resize-only for eval."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from data.config import AugmentConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _to_normalised_tensor() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)]


def eval_transform(image_size: tuple[int, int]) -> v2.Compose:
    """PIL image -> (3, H, W) float32, CLIP-normalised."""
    return v2.Compose(
        [v2.Resize(list(image_size), interpolation=v2.InterpolationMode.BICUBIC), *_to_normalised_tensor()]
    )


def train_transform(image_size: tuple[int, int], augment: AugmentConfig) -> v2.Compose:
    """Resize, random horizontal flip, pad-then-random-crop, normalise, random erasing."""
    steps: list[v2.Transform] = [v2.Resize(list(image_size), interpolation=v2.InterpolationMode.BICUBIC)]
    if augment.hflip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(augment.hflip_prob))
    if augment.crop_padding > 0:
        steps.append(v2.RandomCrop(list(image_size), padding=augment.crop_padding))
    steps += _to_normalised_tensor()
    if augment.erasing_prob > 0:
        steps.append(v2.RandomErasing(p=augment.erasing_prob, scale=(0.02, 0.4), value=0))
    return v2.Compose(steps)
