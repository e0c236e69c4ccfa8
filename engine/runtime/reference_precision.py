"""`train.precision=fp16_reference`: the reference implementation's precision, for reproducing its runs.

The reference casts the weights of every Conv, Linear and MultiheadAttention layer, and any `text_projection` or
`proj` parameter, to fp16 once (CLIP's `convert_weights`); LayerNorms, the token, position and class embeddings
stay fp32. It trains under fp16 autocast and torch Adam steps those fp16 weights themselves: there is no fp32
master copy and no loss scaling. An Adam step moves a weight by at most about lr, and an update under half of
fp16's spacing at the weight (2^-11 of its magnitude) rounds away: at lr 1e-5, on every weight of magnitude 1/32
or more. Adam's moments live in fp16 too, where the usual eps 1e-8 is zero; the reference's eps is 1e-3, and
engine/config.py requires optim.eps >= 1e-3 with this precision.

Pure torch: no deepspeed, no process groups. DeepSpeed runs this without its fp16/bf16 sections, so it neither
upcasts the parameters nor wraps the optimizer (engine/runtime/deepspeed_setup.py).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

FP16_REFERENCE = "fp16_reference"

_ATTENTION_TENSORS = (
    "in_proj_weight",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "in_proj_bias",
    "bias_k",
    "bias_v",
)
_PROJECTION_ATTRIBUTES = ("text_projection", "proj")


def cast_like_reference(model: nn.Module) -> list[str]:
    """Casts, in place, the parameters that the reference's `convert_weights` makes fp16; returns their names.

    Conv1d/Conv2d/Linear weights and biases, MultiheadAttention's projection weights and biases, and parameters
    held directly as `text_projection` or `proj` become fp16. Everything else (LayerNorm, nn.Embedding tables,
    the class embedding, buffers) keeps its dtype."""
    to_cast: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
            to_cast.update(id(p) for p in (module.weight, module.bias) if p is not None)
        if isinstance(module, nn.MultiheadAttention):
            to_cast.update(id(getattr(module, n)) for n in _ATTENTION_TENSORS if getattr(module, n) is not None)
        for name in _PROJECTION_ATTRIBUTES:
            attribute = getattr(module, name, None)
            if isinstance(attribute, nn.Parameter):
                to_cast.add(id(attribute))
    cast = []
    for name, parameter in model.named_parameters():
        if id(parameter) in to_cast:
            parameter.data = parameter.data.half()
            cast.append(name)
    return cast


def reference_autocast(precision: str) -> contextlib.AbstractContextManager:
    """The reference's fp16 autocast around the forward and the loss; nothing for any other precision."""
    if precision != FP16_REFERENCE:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.float16)


__all__ = ["FP16_REFERENCE", "cast_like_reference", "reference_autocast"]
