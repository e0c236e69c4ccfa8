"""Shared fixtures: a tiny hand-made caption set and its packed shards. Helpers live in tests/helpers.py."""

from __future__ import annotations

import os

import torch

# Without a GPU, the Triton kernels in kernels/ run through Triton's CPU interpreter instead of being skipped
# (a kernel test that skips on CPU would test nothing on most machines). Triton decides interpreter-or-compiler when a @triton.jit function is defined, so the variable
# must be set before any test imports a kernel module; here, ahead of every other import, it is also set before
# triton itself is imported. With CUDA the real compiler runs. setdefault lets TRITON_INTERPRET=0/1 be forced.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest

from benchmarks.s3_server import S3Server
from tests.helpers import caption_files, s3_environment, write_caption_set


@pytest.fixture
def caption_set_dir(tmp_path: Path) -> Path:
    return write_caption_set(tmp_path / "raw")


@pytest.fixture
def packed_shards(caption_set_dir: Path, tmp_path: Path) -> Path:
    from data.pack import pack

    out = tmp_path / "shards"
    pack(caption_set_dir / "imgs", caption_files(caption_set_dir), out, images_per_shard=12)
    return out


@pytest.fixture
def s3_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real S3-compatible server (moto's) on 127.0.0.1 with an empty bucket `shards`, and this process's
    environment pointing boto3 and streaming at it with test credentials. Stopped when the test ends."""
    import urllib.request

    # The s3 extra and the dev server: an environment without them (the floor, a PyTorch image) skips these tests.
    boto3 = pytest.importorskip("boto3", reason="s3:// needs the s3 extra (boto3)")
    pytest.importorskip("moto", reason="the test S3 server is moto (a dev dependency)")

    server = S3Server()
    server.start()
    urllib.request.urlopen(urllib.request.Request(f"{server.endpoint}/moto-api/reset", method="POST"), timeout=10)
    for name, value in s3_environment(server.endpoint, tmp_path).items():
        monkeypatch.setenv(name, value)
    boto3.session.Session().client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="shards")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cuhk_root(tmp_path: Path) -> Path:
    """A small synthetic CUHK-PEDES-style benchmark: 6 test identities x 2 images."""
    from data.synthetic import generate

    generate(
        tmp_path / "synthetic", seed=1, train_images=4, test_identities=6, images_per_test_identity=2, progress=False
    )
    return tmp_path / "synthetic" / "cuhk_pedes"


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """A tiny random model exported as training exports it."""
    from engine.model import build_model
    from engine.runtime.checkpoint import export_model
    from tests.helpers import tiny_model_config

    torch.manual_seed(0)
    model = build_model(tiny_model_config(image_size=(64, 32), context_length=48), tap_layer=1)
    export_model(model, tmp_path / "export", model.cfg, tap_layer=1)
    return tmp_path / "export"
