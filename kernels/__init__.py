"""Fused operations of the method. Each op has a PyTorch reference (`<op>_ref.py`); the implementation
is chosen explicitly by the caller (config `nam.kernel`), never by swapping symbols at import time."""

from __future__ import annotations

import torch

from kernels.token_patch_max_cosine_ref import INVALID_TOKEN_VALUE, token_patch_max_cosine_ref

IMPLEMENTATIONS = ("torch",)


def token_patch_max_cosine(
    text_tokens: torch.Tensor,
    image_tokens: torch.Tensor,
    text_valid: torch.Tensor | None = None,
    *,
    impl: str = "torch",
) -> torch.Tensor:
    """For each text token, the max cosine similarity over the image tokens of the same sample.

    text_tokens (B, N, D), image_tokens (B, M, D), text_valid (B, N) bool -> (B, N) float32;
    tokens where text_valid is False get INVALID_TOKEN_VALUE.
    """
    if text_tokens.dim() != 3 or image_tokens.dim() != 3:
        raise ValueError(
            f"token_patch_max_cosine needs (B, N, D) and (B, M, D); got {tuple(text_tokens.shape)} and {tuple(image_tokens.shape)}"
        )
    if text_tokens.shape[0] != image_tokens.shape[0] or text_tokens.shape[2] != image_tokens.shape[2]:
        raise ValueError(
            f"token_patch_max_cosine: batch and feature sizes differ: {tuple(text_tokens.shape)} vs {tuple(image_tokens.shape)}"
        )
    if text_valid is not None and text_valid.shape != text_tokens.shape[:2]:
        raise ValueError(
            f"token_patch_max_cosine: text_valid {tuple(text_valid.shape)} must be {tuple(text_tokens.shape[:2])}"
        )
    if impl == "torch":
        return token_patch_max_cosine_ref(text_tokens, image_tokens, text_valid)
    raise ValueError(f"unknown token_patch_max_cosine implementation {impl!r}; available: {', '.join(IMPLEMENTATIONS)}")


__all__ = ["INVALID_TOKEN_VALUE", "IMPLEMENTATIONS", "token_patch_max_cosine", "token_patch_max_cosine_ref"]
