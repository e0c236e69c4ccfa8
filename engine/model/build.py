"""Building a model: construct the dual encoder, then load weights into it. The one place above both the model
(clip.py) and the weight formats (weights.py), so neither imports the other."""

from __future__ import annotations

from engine.config import ModelConfig
from engine.model.clip import CLIPDualEncoder
from engine.model.weights import load_pretrained


def build_model(cfg: ModelConfig, tap_layer: int) -> CLIPDualEncoder:
    """Random CLIP-style init, then the local checkpoint at `cfg.pretrained` if one is named."""
    model = CLIPDualEncoder(cfg, tap_layer=tap_layer)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained, position_interpolation=cfg.position_interpolation)
    return model
