"""Feature extraction split over 2 real gloo processes equals one process."""

from pathlib import Path

import pytest
import torch

from data.datasets import load_split
from engine.model import build_model
from eval.encode import encode_split
from tests.helpers import run_on_ranks, tiny_model_config


def encode_on_rank(rank: int, world: int, root: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(image_size=(64, 32), context_length=48), tap_layer=1)
    return encode_split(model, load_split("cuhk-pedes", root, "test"), batch_size=4)


@pytest.mark.multirank
def test_two_ranks_extract_the_same_features_as_one(tmp_path: Path):
    from data.synthetic import generate

    generate(tmp_path / "s", seed=2, train_images=2, test_identities=5, images_per_test_identity=3, progress=False)
    root = str(tmp_path / "s" / "cuhk_pedes")
    images, captions = encode_on_rank(0, 1, root)
    assert images.shape[0] == 15 and captions.shape[0] == 30
    for rank_images, rank_captions in run_on_ranks(2, encode_on_rank, root):
        torch.testing.assert_close(rank_images, images, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rank_captions, captions, rtol=1e-5, atol=1e-6)
