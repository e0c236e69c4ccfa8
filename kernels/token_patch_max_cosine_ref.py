"""PyTorch reference of the token-patch cosine max: the CPU path and the oracle for kernel tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

INVALID_TOKEN_VALUE = 0.0  # what padding / invalid text tokens get; never read as a real score


def token_patch_max_cosine_ref(
    text_tokens: torch.Tensor, image_tokens: torch.Tensor, text_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """s[b, i] = max_j cos(text_tokens[b, i], image_tokens[b, j]).

    text_tokens (B, N, D), image_tokens (B, M, D), text_valid (B, N) bool or None -> (B, N) float32.
    The B x N x M similarity tensor is materialised here; the fused kernel avoids that.
    """
    text = F.normalize(text_tokens.float(), dim=-1)  # (B, N, D)
    image = F.normalize(image_tokens.float(), dim=-1)  # (B, M, D)
    best = torch.einsum("bnd,bmd->bnm", text, image).amax(dim=-1)  # (B, N)
    if text_valid is not None:
        best = best.masked_fill(~text_valid, INVALID_TOKEN_VALUE)
    return best
