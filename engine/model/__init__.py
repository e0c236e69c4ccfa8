"""The pure model: the CLIP dual encoder with its layer-l tap (clip.py), IRRA's fine-tuning heads (heads.py), the
weight formats it loads (weights.py) and `build_model` (build.py). Nothing here imports deepspeed or
torch.distributed; ranks, ZeRO and checkpoints live in the engine code around it."""

from engine.model.build import build_model
from engine.model.clip import CLIPDualEncoder

__all__ = ["CLIPDualEncoder", "build_model"]
