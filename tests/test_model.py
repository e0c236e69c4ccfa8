"""The pure dual encoder: shapes, the layer-l tap, EOT pooling, gradients, and no distributed imports."""

import ast

import pytest
import torch

from data.tokenizer import EOT_ID, CaptionTokenizer
from engine.config import ConfigError
from engine.model import CLIPDualEncoder, build_model
from tests.helpers import REPO, tiny_model_config

TINY = tiny_model_config(image_size=(64, 32), text_heads=4)  # grid 4x2 -> M = 8 patches
B, N, E = 3, TINY.context_length, TINY.embed_dim
M = TINY.grid[0] * TINY.grid[1]


@pytest.fixture(scope="module")
def model() -> CLIPDualEncoder:
    torch.manual_seed(0)
    return build_model(TINY, tap_layer=1).eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    captions = ["a man in a black jacket", "a woman with a red bag and white shoes", "a child"]
    return CaptionTokenizer(context_length=N)(captions)  # (B, N)


def test_shapes(model: CLIPDualEncoder, ids: torch.Tensor) -> None:
    images = torch.randn(B, 3, *TINY.image_size)
    assert M == 8
    assert model.encode_image(images).shape == (B, E)
    v_cls, patch_tokens = model.encode_image(images, return_tokens=True)
    assert v_cls.shape == (B, E) and patch_tokens.shape == (B, M, E)
    assert model.encode_text(ids).shape == (B, E)
    t_eos, text_tokens = model.encode_text(ids, return_tokens=True)
    assert t_eos.shape == (B, E) and text_tokens.shape == (B, N, E)
    assert model.vision_model.embeddings.position_embedding.weight.shape == (M + 1, TINY.vision_width)


def test_tap_tokens_are_detached(model: CLIPDualEncoder, ids: torch.Tensor) -> None:
    v_cls, patch_tokens = model.encode_image(torch.randn(B, 3, *TINY.image_size), return_tokens=True)
    t_eos, text_tokens = model.encode_text(ids, return_tokens=True)
    assert v_cls.requires_grad and t_eos.requires_grad
    assert not patch_tokens.requires_grad and not text_tokens.requires_grad


def test_text_tokens_prefix_matches_tap(model: CLIPDualEncoder, ids: torch.Tensor) -> None:
    _, tapped = model.encode_text(ids, return_tokens=True)
    torch.testing.assert_close(model.encode_text_tokens(ids, model.tap_layer), tapped)
    deeper = CLIPDualEncoder(TINY, tap_layer=2).eval()
    _, tapped = deeper.encode_text(ids, return_tokens=True)
    torch.testing.assert_close(deeper.encode_text_tokens(ids, 2), tapped)


def test_eot_pooling_uses_argmax(model: CLIPDualEncoder, ids: torch.Tensor) -> None:
    all_tokens = model.encode_text_tokens(ids, TINY.text_layers)  # (B, N, E) after every block
    eot = ids.argmax(dim=-1)
    assert (ids[torch.arange(B), eot] == EOT_ID).all()
    torch.testing.assert_close(model.encode_text(ids), all_tokens[torch.arange(B), eot])
    # Causal attention: whatever follows EOT (padding) cannot change t_eos.
    noisy = ids.clone()
    after_eot = torch.arange(N)[None] > eot[:, None]
    noisy[after_eot] = 320
    torch.testing.assert_close(model.encode_text(noisy), model.encode_text(ids))


def test_forward_dict(model: CLIPDualEncoder, ids: torch.Tensor) -> None:
    images = torch.randn(B, 3, *TINY.image_size)
    plain = model(images, ids)
    assert set(plain) == {"image_feats", "text_feats"}
    out = model(images, ids, score_ids=ids)
    assert set(out) == {"image_feats", "text_feats", "image_tokens", "score_tokens"}
    assert out["image_tokens"].shape == (B, M, E) and out["score_tokens"].shape == (B, N, E)
    assert not out["score_tokens"].requires_grad and not out["image_tokens"].requires_grad
    torch.testing.assert_close(out["image_feats"], plain["image_feats"])
    torch.testing.assert_close(out["score_tokens"], model.encode_text(ids, return_tokens=True)[1])


def test_gradient_reaches_both_towers(ids: torch.Tensor) -> None:
    model = CLIPDualEncoder(TINY, tap_layer=1)
    out = model(torch.randn(B, 3, *TINY.image_size), ids, score_ids=ids)
    (out["image_feats"].square().sum() + out["text_feats"].square().sum()).backward()
    for name in (
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding.weight",
        "vision_model.encoder.layers.1.mlp.fc2.weight",
        "visual_projection.weight",
        "text_model.embeddings.token_embedding.weight",
        "text_model.encoder.layers.1.self_attn.q_proj.weight",
        "text_projection.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert "logit_scale" not in dict(model.named_parameters())  # fixed temperature: nothing to train


def test_bf16_forward(ids: torch.Tensor) -> None:
    model = CLIPDualEncoder(TINY, tap_layer=1).to(torch.bfloat16)
    out = model(torch.randn(B, 3, *TINY.image_size), ids, score_ids=ids)
    assert all(v.dtype == torch.bfloat16 for v in out.values())


def test_rejects_bad_tap_layer_and_image_size(model: CLIPDualEncoder) -> None:
    with pytest.raises(ConfigError, match="tap_layer"):
        CLIPDualEncoder(TINY, tap_layer=3)
    with pytest.raises(ValueError, match="image size 32x32"):
        model.encode_image(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("module", sorted(p.name for p in (REPO / "engine" / "model").glob("*.py")))
def test_model_package_is_pure(module: str) -> None:
    tree = ast.parse((REPO / "engine" / "model" / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert not any(name.split(".")[0] == "deepspeed" for name in imported), imported
    assert not any(name.startswith("torch.distributed") for name in imported), imported
    assert "engine.runtime.collectives" not in imported, imported
