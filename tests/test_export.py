"""Export to a transformers CLIP folder: `CLIPModel.from_pretrained` gives our features, `CLIPTokenizer` our ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPVisionConfig
from transformers import CLIPTokenizer as HFCLIPTokenizer
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

from data.tokenizer import EOT_ID, MASK_ID, SOT_ID, CaptionTokenizer
from engine.model import build_model
from engine.runtime.checkpoint import export_model
from eval.export import export_transformers, main, square_position_table, square_side
from tests.helpers import projected, tiny_model_config

CAPTIONS = [
    "A woman in a red coat, black trousers and white sneakers.",
    "The MAN wears   a dark-blue T-shirt & jeans; his hair is short!!",
    "Ein Mann mit Rucksack (grün) — 3 Taschen, 42 cm",
    "a man",
    "",
]
CONTEXT = 16  # tiny_model_config's context length; the first two captions are truncated to it


def _resampled_by_transformers(square: torch.Tensor, grid: tuple[int, int], patch: int = 16) -> torch.Tensor:
    """What transformers' interpolate_pos_encoding makes of `square` for a (rows * patch, cols * patch) image."""
    side = square_side(grid) or max(grid)
    config = CLIPVisionConfig(
        hidden_size=square.shape[1], num_attention_heads=1, image_size=side * patch, patch_size=patch
    )
    embeddings = CLIPVisionEmbeddings(config)
    embeddings.position_embedding.weight.data.copy_(square)
    tokens = torch.zeros(1, 1 + grid[0] * grid[1], square.shape[1])  # (1, 1 + M, D), only its shape is read
    return embeddings.interpolate_pos_encoding(tokens, grid[0] * patch, grid[1] * patch)[0]


@pytest.mark.parametrize("grid", [(24, 8), (6, 2), (2, 2), (3, 1)])
def test_square_table_resamples_back_bit_for_bit(grid: tuple[int, int]) -> None:
    table = torch.randn(1 + grid[0] * grid[1], 8)
    square = square_position_table(table, grid)
    assert square.shape == (1 + square_side(grid) ** 2, 8)
    restored = _resampled_by_transformers(square, grid)
    assert torch.equal(restored, table), f"max abs diff {(restored - table).abs().max():.3g}"


@pytest.mark.parametrize("grid", [(4, 2), (24, 12), (16, 8)])
def test_square_table_without_an_odd_multiple_is_solved(grid: tuple[int, int]) -> None:
    assert square_side(grid) is None
    table = torch.randn(1 + grid[0] * grid[1], 8)
    restored = _resampled_by_transformers(square_position_table(table, grid), grid)
    torch.testing.assert_close(restored, table, atol=1e-5, rtol=0)


def _tiny_model(image_size: tuple[int, int]):
    torch.manual_seed(0)
    return build_model(tiny_model_config(image_size=image_size), tap_layer=1).eval()


@pytest.fixture(scope="module", params=[(64, 32), (96, 32)], ids=["grid4x2-solved", "grid6x2-exact"])
def exported(request, tmp_path_factory) -> tuple:
    model = _tiny_model(request.param)
    out_dir = tmp_path_factory.mktemp("hf")
    export_transformers(model, out_dir)
    return model, out_dir


@torch.no_grad()
def test_from_pretrained_gives_our_features(exported: tuple) -> None:
    model, out_dir = exported
    hf_model = CLIPModel.from_pretrained(out_dir).eval()
    images = torch.randn(4, 3, *model.cfg.image_size)  # (B, 3, H, W)
    hf_images = projected(hf_model.get_image_features(pixel_values=images, interpolate_pos_encoding=True))
    torch.testing.assert_close(hf_images, model.encode_image(images), atol=1e-5, rtol=0)
    ids = CaptionTokenizer(context_length=CONTEXT)(CAPTIONS)  # (B, N), zero-padded after EOT
    hf_texts = projected(hf_model.get_text_features(input_ids=ids))
    torch.testing.assert_close(hf_texts, model.encode_text(ids), atol=1e-5, rtol=0)
    hf_ids = HFCLIPTokenizer.from_pretrained(out_dir)(CAPTIONS, padding="max_length", truncation=True)["input_ids"]
    hf_texts = projected(hf_model.get_text_features(input_ids=torch.tensor(hf_ids)))  # padded with EOT, not 0
    torch.testing.assert_close(hf_texts, model.encode_text(ids), atol=1e-5, rtol=0)


def test_tokenizer_gives_our_ids(exported: tuple) -> None:
    _, out_dir = exported
    ours = CaptionTokenizer(context_length=CONTEXT)
    theirs = HFCLIPTokenizer.from_pretrained(out_dir)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.mask_token_id) == (SOT_ID, EOT_ID, MASK_ID)
    assert len(theirs) == ours.vocab_size
    for caption, row in zip(CAPTIONS, ours(CAPTIONS), strict=True):
        expected = row[: row.tolist().index(EOT_ID) + 1].tolist()  # SOT ... EOT, without our zero padding
        assert theirs(caption, truncation=True)["input_ids"] == expected, caption
    assert theirs("jekyll")["input_ids"] == [SOT_ID, *ours.encode("jekyll"), EOT_ID]  # the dropped merge


def test_cli_exports_a_checkpoint(tmp_path: Path, capsys) -> None:
    model = _tiny_model((96, 32))
    export_model(model, tmp_path / "ckpt", model.cfg, tap_layer=1)
    assert main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    assert "interpolate_pos_encoding=True" in capsys.readouterr().out
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    # the vocabulary as vocab.json + merges.txt (transformers 4.x) or as one tokenizer.json (5.x)
    assert {"vocab.json", "merges.txt"} <= names or "tokenizer.json" in names, names
    assert CLIPModel.from_pretrained(tmp_path / "hf").config.vision_config.image_size == 96


def test_missing_checkpoint_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "hf")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no checkpoint at") and error.count("\n") == 1
    assert not (tmp_path / "hf").exists()
