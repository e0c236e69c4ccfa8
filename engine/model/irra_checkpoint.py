"""The training checkpoints of the authors' code (MLLM4Text-ReID, built on IRRA), read as weights.

Their `Checkpointer.save` writes one `torch.save` dict: `model` (the whole model's state dict), usually `optimizer`,
`scheduler` and the epoch. The model's keys are:
- `base_model.<OpenAI CLIP name>` (`base_model.visual.conv1.weight`, `base_model.token_embedding.weight`, ...), the
  vision position table already at the training grid (24x8 + 1 rows at 384x128);
- for a fine-tuned IRRA model, its heads: `classifier`, `cross_attn`, `cross_modal_transformer.resblocks.{i}`,
  `ln_pre_t`, `ln_pre_i`, `ln_post` and `mlm_head`;
- a `module.` prefix on every key when trained under nn.DataParallel.
Weights may be fp16 (their `convert_weights`: Linear, Conv, attention and projections), LayerNorms and embeddings
fp32. `load_state_dict` casts them into the model's dtype.

The file is read by the caller with `torch.load(weights_only=True)`; this module only sorts what it holds.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch

FORMAT = "IRRA / MLLM4Text-ReID training checkpoint"
_BASE = "base_model."
_DATA_PARALLEL = "module."
# IRRA's head names -> the names of engine/model/heads.py's modules inside DualEncoderWithHeads (same layouts).
_HEAD_RENAMES = (
    (re.compile(r"^classifier\."), "id_classifier.classifier."),
    (re.compile(r"^cross_attn\."), "mlm.cross_attn."),
    (re.compile(r"^cross_modal_transformer\.resblocks\."), "mlm.blocks."),
    (re.compile(r"^ln_pre_t\."), "mlm.ln_pre_text."),
    (re.compile(r"^ln_pre_i\."), "mlm.ln_pre_image."),
    (re.compile(r"^ln_post\."), "mlm.ln_post."),
    (re.compile(r"^mlm_head\."), "mlm.head."),
)


@dataclass
class IrraCheckpoint:
    """What an authors' checkpoint holds, sorted."""

    clip: dict[str, torch.Tensor]  # the CLIP dual encoder in OpenAI's names, `base_model.` removed
    heads: dict[str, torch.Tensor]  # IRRA's heads under this project's names (`id_classifier.*`, `mlm.*`)
    unknown: list[str]  # model tensors that are neither (reported, not loaded)
    ignored: list[str]  # the file's other entries: optimizer, scheduler, epoch, ...
    data_parallel: bool  # keys carried nn.DataParallel's `module.` prefix

    def describe(self) -> str:
        """e.g. 'IRRA / MLLM4Text-ReID training checkpoint (nn.DataParallel prefix, fp16 x 98 + fp32 x 52 tensors)'."""
        dtypes = Counter(str(t.dtype).removeprefix("torch.").replace("float", "fp") for t in self.clip.values())
        counts = " + ".join(f"{name} x {n}" for name, n in sorted(dtypes.items()))
        prefix = "nn.DataParallel prefix, " if self.data_parallel else ""
        return f"{FORMAT} ({prefix}{counts} tensors)"


def is_irra_checkpoint(loaded: object) -> bool:
    """A dict whose `model` entry is a state dict with `base_model.` (or `module.base_model.`) keys."""
    if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
        return False
    return any(isinstance(k, str) and k.removeprefix(_DATA_PARALLEL).startswith(_BASE) for k in loaded["model"])


def split_irra_checkpoint(loaded: dict) -> IrraCheckpoint:
    """Sorts `loaded` (see is_irra_checkpoint) into the CLIP weights, the heads and what is not read."""
    state = loaded["model"]
    data_parallel = all(isinstance(k, str) and k.startswith(_DATA_PARALLEL) for k in state)
    clip: dict[str, torch.Tensor] = {}
    heads: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        name = key.removeprefix(_DATA_PARALLEL) if data_parallel else key
        if not isinstance(value, torch.Tensor):
            unknown.append(name)
        elif name.startswith(_BASE):
            clip[name.removeprefix(_BASE)] = value
        elif (ours := irra_head_name(name)) is not None:
            heads[ours] = value
        else:
            unknown.append(name)
    ignored = [str(k) for k in loaded if k != "model"]
    return IrraCheckpoint(clip=clip, heads=heads, unknown=unknown, ignored=ignored, data_parallel=data_parallel)


def irra_head_name(name: str) -> str | None:
    """IRRA's head parameter name -> this project's (None for a name that is not one of IRRA's heads)."""
    for pattern, replacement in _HEAD_RENAMES:
        if pattern.match(name):
            return pattern.sub(replacement, name, count=1)
    return None


def ours_to_irra_head_name(name: str) -> str:
    """The inverse of irra_head_name, for writing files in the authors' layout."""
    for pattern, replacement in _HEAD_RENAMES:
        if name.startswith(replacement):
            return pattern.pattern.removeprefix("^").replace("\\", "") + name.removeprefix(replacement)
    raise KeyError(f"no IRRA name for {name}")


__all__ = [
    "FORMAT",
    "IrraCheckpoint",
    "irra_head_name",
    "is_irra_checkpoint",
    "ours_to_irra_head_name",
    "split_irra_checkpoint",
]
