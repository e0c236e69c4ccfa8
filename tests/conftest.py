"""Shared fixtures: a tiny hand-made caption set and its packed shards. Helpers live in tests/helpers.py."""

from __future__ import annotations

import os

import torch

# Without a GPU, the Triton kernels in kernels/ run through Triton's CPU interpreter instead of being skipped
# (STYLE.md item 7). Triton decides interpreter-or-compiler when a @triton.jit function is defined, so the variable
# must be set before any test imports a kernel module; here, ahead of every other import, it is also set before
# triton itself is imported. With CUDA the real compiler runs. setdefault lets TRITON_INTERPRET=0/1 be forced.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest

from tests.helpers import caption_files, write_caption_set


@pytest.fixture
def caption_set_dir(tmp_path: Path) -> Path:
    return write_caption_set(tmp_path / "raw")


@pytest.fixture
def packed_shards(caption_set_dir: Path, tmp_path: Path) -> Path:
    from data.pack import pack

    out = tmp_path / "shards"
    pack(caption_set_dir / "imgs", caption_files(caption_set_dir), out, images_per_shard=12)
    return out
