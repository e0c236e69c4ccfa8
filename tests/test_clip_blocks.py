"""engine/model/blocks.py against transformers' CLIP: a random tiny `CLIPModel`'s state dict loads into our dual
encoder under the same names, and every feature the model gives (v_cls, t_eos, the layer-l tap tokens, the
early-stopped text tokens) equals the one transformers computes from the same weights, in fp32 within 1e-5. Runs
under whichever transformers is installed (4.57 in the lock; 5.x on a cluster image); only the tests import it."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from engine.model import CLIPDualEncoder
from tests.helpers import REPO, call_clip_layer, tiny_model_config

CONTEXT = 16
LAYERS = 3
TAP = 2  # below the last layer, so the tap and the early stop are not the last layer's output
EOT = 49407
CFG = tiny_model_config(
    image_size=(32, 32),  # 2x2 patches: CLIPModel's square table equals ours, no resampling in between
    vision_layers=LAYERS,
    text_layers=LAYERS,
    text_heads=4,
    context_length=CONTEXT,
)
ATOL = 1e-5


def hf_config() -> CLIPConfig:
    common = {"intermediate_size": 4 * CFG.vision_width, "num_hidden_layers": LAYERS, "hidden_act": "quick_gelu"}
    return CLIPConfig(
        vision_config={
            **common,
            "hidden_size": CFG.vision_width,
            "num_attention_heads": CFG.vision_heads,
            "image_size": CFG.image_size[0],
            "patch_size": CFG.patch_size,
        },
        text_config={
            **common,
            "hidden_size": CFG.text_width,
            "num_attention_heads": CFG.text_heads,
            "vocab_size": CFG.vocab_size,
            "max_position_embeddings": CONTEXT,
            "eos_token_id": EOT,  # pools at the first EOT, as argmax(ids) does for our ids
        },
        projection_dim=CFG.embed_dim,
    )


@pytest.fixture(scope="module")
def models() -> tuple[CLIPModel, CLIPDualEncoder]:
    torch.manual_seed(0)
    reference = CLIPModel(hf_config()).eval()
    with torch.no_grad():  # CLIPModel zeroes biases and sets LayerNorms to identity: randomise them too
        for name, parameter in reference.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.normal_(std=0.1 if name.endswith("bias") else 1.0)
    ours = CLIPDualEncoder(CFG, tap_layer=TAP).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, *CFG.image_size, generator=generator)  # (B, 3, H, W)
    ids = torch.randint(1, 49406, (3, CONTEXT), generator=generator)  # (B, N)
    ids[:, 0] = 49406  # SOT
    for row, length in enumerate((5, 11, CONTEXT)):
        ids[row, length - 1] = EOT
        ids[row, length:] = 0  # our tokenizer pads with 0 after EOT
    return images, ids


def test_parameter_names_and_shapes_equal_clipmodel(models: tuple[CLIPModel, CLIPDualEncoder]) -> None:
    reference, ours = models
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mine == theirs
    # and each tower's parameter order (DeepSpeed's flat optimizer partitions in checkpoints follow it)
    for tower in ("vision_model.", "text_model."):
        order = [n for n, _ in ours.named_parameters() if n.startswith(tower)]
        assert order == [n for n, _ in reference.named_parameters() if n.startswith(tower)]


@torch.no_grad()
def test_global_features_equal_transformers(models: tuple[CLIPModel, CLIPDualEncoder]) -> None:
    reference, ours = models
    images, ids = inputs()
    # from the submodules, not get_*_features, whose return type changed in transformers 5
    v_cls = reference.visual_projection(reference.vision_model(pixel_values=images).pooler_output)
    t_eos = reference.text_projection(reference.text_model(input_ids=ids).pooler_output)
    torch.testing.assert_close(ours.encode_image(images), v_cls, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.encode_text(ids), t_eos, atol=ATOL, rtol=0)
    out = ours(images, ids)
    torch.testing.assert_close(out["image_feats"], v_cls, atol=ATOL, rtol=0)
    torch.testing.assert_close(out["text_feats"], t_eos, atol=ATOL, rtol=0)


@torch.no_grad()
def test_tap_and_early_stop_equal_transformers_hidden_states(models: tuple[CLIPModel, CLIPDualEncoder]) -> None:
    reference, ours = models
    images, ids = inputs()
    vision = reference.vision_model(pixel_values=images, output_hidden_states=True).hidden_states  # [0] = input
    text = reference.text_model(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(vision) == len(text) == LAYERS + 1
    patches = reference.visual_projection(reference.vision_model.post_layernorm(vision[TAP][:, 1:]))  # (B, M, E)
    _, image_tokens = ours.encode_image(images, return_tokens=True)
    torch.testing.assert_close(image_tokens, patches, atol=ATOL, rtol=0)
    whole = reference.visual_projection(reference.vision_model.post_layernorm(vision[LAYERS]))  # (B, 1 + M, E)
    torch.testing.assert_close(ours.encode_image(images, all_tokens=True), whole, atol=ATOL, rtol=0)

    def projected(depth: int) -> torch.Tensor:  # (B, N, E)
        return reference.text_projection(reference.text_model.final_layer_norm(text[depth]))

    _, text_tokens = ours.encode_text(ids, return_tokens=True)
    torch.testing.assert_close(text_tokens, projected(TAP), atol=ATOL, rtol=0)
    for depth in range(1, LAYERS + 1):  # stopping after `depth` blocks gives transformers' state after that block
        torch.testing.assert_close(ours.encode_text_tokens(ids, depth), projected(depth), atol=ATOL, rtol=0)
    out = ours(images, ids, ids, image_sequence=True, text_sequence=True)
    torch.testing.assert_close(out["score_tokens"], projected(TAP), atol=ATOL, rtol=0)
    torch.testing.assert_close(out["image_tokens"], patches, atol=ATOL, rtol=0)
    torch.testing.assert_close(out["text_sequence"], projected(LAYERS), atol=ATOL, rtol=0)


@torch.no_grad()
def test_a_rectangular_model_loads_clipmodel_blocks(models: tuple[CLIPModel, CLIPDualEncoder]) -> None:
    """Only the vision position table differs on a 4x2 grid; with it fed in, the blocks give transformers' tokens."""
    reference, _ = models
    ours = CLIPDualEncoder(dataclasses.replace(CFG, image_size=(64, 32)), tap_layer=TAP).eval()
    state = reference.state_dict()
    table = "vision_model.embeddings.position_embedding.weight"
    state[table] = torch.randn(4 * 2 + 1, CFG.vision_width)
    ours.load_state_dict(state, strict=True)
    images = inputs()[0].repeat(1, 1, 2, 1)  # (B, 3, 64, 32)
    vision = reference.vision_model
    embedded = vision.embeddings.patch_embedding(images).flatten(2).transpose(1, 2)  # (B, 8, D)
    hidden = torch.cat([vision.embeddings.class_embedding.expand(len(images), 1, -1), embedded], 1) + state[table]
    hidden = vision.pre_layrnorm(hidden)
    for layer in vision.encoder.layers:
        hidden = call_clip_layer(layer, hidden)
    expected = reference.visual_projection(vision.post_layernorm(hidden[:, 0]))
    torch.testing.assert_close(ours.encode_image(images), expected, atol=ATOL, rtol=0)


def test_the_model_does_not_import_transformers() -> None:
    for path in [*sorted((REPO / "engine" / "model").glob("*.py")), REPO / "eval" / "search" / "gallery_search.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert not [n for n in names if n.split(".")[0] == "transformers"], f"{path.name} imports transformers"
    probe = "import sys, engine.model; print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout
