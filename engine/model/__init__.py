"""The pure model: the CLIP dual encoder with its layer-l tap (clip.py), IRRA's fine-tuning heads (heads.py) and
the module that trains them with it (training_model.py), the weight formats it loads (weights.py) and
`build_model` (build.py). Nothing here imports deepspeed, torch.distributed, engine/method/ or engine/runtime/;
ranks, ZeRO and checkpoints live in engine/runtime/ around it (tests/test_import_layers.py)."""

from engine.model.build import build_model
from engine.model.clip import CLIPDualEncoder

__all__ = ["CLIPDualEncoder", "build_model"]
