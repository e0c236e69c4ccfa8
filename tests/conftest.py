"""Shared fixtures: tiny models, a tiny hand-made caption set, and its packed shards."""

from __future__ import annotations

import os

import torch

# Without a GPU, the Triton kernels in kernels/ run through Triton's CPU interpreter instead of being skipped
# (STYLE.md item 7). Triton decides interpreter-or-compiler when a @triton.jit function is defined, so the variable
# must be set before any test imports a kernel module; here, ahead of every other import, it is also set before
# triton itself is imported. With CUDA the real compiler runs. setdefault lets TRITON_INTERPRET=0/1 be forced.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from engine.config import ModelConfig

SOURCES = ("Ts-qwen", "Ts-shikra", "Td-qwen", "Td-shikra")
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 230, 30)}
REPO = Path(__file__).resolve().parents[1]


def tiny_model_config(**changes) -> ModelConfig:
    """Width 64, 2 layers, 32x32 images (2x2 patches): fast enough for every unit test."""
    values = dict(
        image_size=(32, 32),
        vision_width=64,
        vision_layers=2,
        vision_heads=2,
        text_width=64,
        text_layers=2,
        text_heads=2,
        embed_dim=32,
        context_length=16,
    )
    return ModelConfig(**(values | changes))


def write_caption_set(root: Path, *, images: int = 48, dirty_every: int = 10, seed: int = 0) -> Path:
    """Plain-colour images and four caption files; every `dirty_every`-th dynamic qwen caption keeps a slot."""
    rng = random.Random(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    captions: dict[str, dict[str, str]] = {s: {} for s in SOURCES}
    for index in range(images):
        colour = rng.choice(sorted(COLOURS))
        name = f"{index:05d}.jpg"
        Image.new("RGB", (32, 64), COLOURS[colour]).save(root / "imgs" / name)
        captions["Ts-qwen"][name] = f"a person in a {colour} shirt"
        captions["Ts-shikra"][name] = f"the man wears {colour} clothes"
        captions["Td-qwen"][name] = (
            "a [clothing description] person" if index % dirty_every == 0 else f"a {colour} coat"
        )
        captions["Td-shikra"][name] = f"someone dressed in {colour}"
    for source, mapping in captions.items():
        (root / f"{source}.json").write_text(json.dumps(mapping))
    return root


def caption_files(root: Path) -> list[Path]:
    return [root / f"{s}.json" for s in SOURCES]


@pytest.fixture
def caption_set_dir(tmp_path: Path) -> Path:
    return write_caption_set(tmp_path / "raw")


@pytest.fixture
def packed_shards(caption_set_dir: Path, tmp_path: Path) -> Path:
    from data.pack import pack

    out = tmp_path / "shards"
    pack(caption_set_dir / "imgs", caption_files(caption_set_dir), out, images_per_shard=12)
    return out
