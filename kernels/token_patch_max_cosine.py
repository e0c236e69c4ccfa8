"""The token-patch max cosine of NAM, dispatched to one of its two implementations: the fused Triton kernel
(`token_patch_max_cosine_triton.py`) or the PyTorch reference (`token_patch_max_cosine_ref.py`, also the CPU path).
The caller chooses explicitly (config `nam.kernel`), never by swapping symbols at import time."""

from __future__ import annotations

import torch

from kernels.token_patch_max_cosine_ref import INVALID_TOKEN_VALUE, token_patch_max_cosine_ref

try:  # importing triton needs no GPU; only an install without the triton package lands in the except
    from kernels.token_patch_max_cosine_triton import token_patch_max_cosine_triton
except ModuleNotFoundError as error:
    if error.name is None or not error.name.startswith("triton"):
        raise
    token_patch_max_cosine_triton = None
    _TRITON_MISSING = f"impl='triton' needs the triton package ({error}); use impl='auto' or 'torch'"

IMPLEMENTATIONS = ("auto", "triton", "torch")  # auto: triton for CUDA tensors, torch otherwise


def choose_implementation(impl: str, device: torch.device) -> str:
    """Resolve `impl` to "triton" or "torch" for tensors on `device`; "auto" takes Triton only on CUDA."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown token_patch_max_cosine implementation {impl!r}; available: {', '.join(IMPLEMENTATIONS)}"
        )
    if impl == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return impl


def token_patch_max_cosine(
    text_tokens: torch.Tensor,
    image_tokens: torch.Tensor,
    text_valid: torch.Tensor | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """For each text token, the max cosine similarity over the image tokens of the same sample.

    text_tokens (B, N, D), image_tokens (B, M, D), text_valid (B, N) bool -> (B, N) float32;
    tokens where text_valid is False get INVALID_TOKEN_VALUE. impl: auto | triton | torch (see IMPLEMENTATIONS);
    impl="triton" on CPU tensors runs only under Triton's interpreter (TRITON_INTERPRET=1).
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
    if choose_implementation(impl, text_tokens.device) == "triton":
        if token_patch_max_cosine_triton is None:
            raise ValueError(_TRITON_MISSING)
        return token_patch_max_cosine_triton(text_tokens, image_tokens, text_valid)
    return token_patch_max_cosine_ref(text_tokens, image_tokens, text_valid)


__all__ = [
    "INVALID_TOKEN_VALUE",
    "IMPLEMENTATIONS",
    "choose_implementation",
    "token_patch_max_cosine",
    "token_patch_max_cosine_ref",
    "token_patch_max_cosine_triton",
]
