"""Building a model: construct the dual encoder, then load weights into it. The one place above both the model
(clip.py) and the weight formats (weights.py)."""

from __future__ import annotations

import os

from engine.config import ModelConfig, NamConfig
from engine.model.clip import CLIPDualEncoder
from engine.model.weights import (
    PretrainedWeights,
    load_pretrained,
    load_weights,
    model_config_from_weights,
    read_weights,
)


def build_model(cfg: ModelConfig, tap_layer: int) -> CLIPDualEncoder:
    """Random CLIP-style init, then the local checkpoint at `cfg.pretrained` if one is named (announced in one
    line)."""
    model, weights = build_model_with_weights(cfg, tap_layer)
    if weights is not None:
        announce(f"model.pretrained: {weights.describe()}")
    return model


def build_model_with_weights(cfg: ModelConfig, tap_layer: int) -> tuple[CLIPDualEncoder, PretrainedWeights | None]:
    """build_model without the announcement, returning what was read: the caller may load its heads and say so."""
    model = CLIPDualEncoder(cfg, tap_layer=tap_layer)
    if not cfg.pretrained:
        return model, None
    return model, load_pretrained(model, cfg.pretrained, position_interpolation=cfg.position_interpolation)


def build_model_from_weights(path: str, tap_layer: int | None = None) -> tuple[CLIPDualEncoder, PretrainedWeights]:
    """The dual encoder that a weights file alone describes (OpenAI's ViT-B-16.pt, an authors' checkpoint, a
    transformers folder): its config is derived from the shapes (weights.model_config_from_weights) and the tap
    layer is nam.tap_layer's default, cut to the model's depth."""
    weights = read_weights(path)
    cfg = model_config_from_weights(weights)
    tap_layer = min(tap_layer or NamConfig().tap_layer, cfg.vision_layers, cfg.text_layers)
    model = CLIPDualEncoder(cfg, tap_layer=tap_layer)
    load_weights(model, weights, position_interpolation=cfg.position_interpolation)
    return model, weights


def announce(line: str) -> None:
    """Print once per job: on the process the launcher numbered rank 0 (or the only one)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)
