"""Noise-aware masking (NAM) and its uniform baseline (EM), docs/method.md.

Per caption: tokens whose layer-l embedding matches no image patch well are likely noise and get a
higher masking probability. Scores from epoch e drive the masks of epoch e+1 (engine/noise_table.py)."""

from __future__ import annotations

import torch

from engine.tokenizer import MASK_ID

MASK_REPLACE_SHARE = 0.8  # of drawn tokens become <|mask|>
RANDOM_REPLACE_SHARE = 0.1  # become a random ordinary token; the rest stay unchanged (BERT-style)


def valid_token_mask(ids: torch.Tensor) -> torch.Tensor:
    """(B, N) ids -> (B, N) bool: True strictly between SOT (position 0) and the EOT (argmax id)."""
    positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)  # (1, N)
    eot_positions = ids.argmax(dim=1, keepdim=True)  # (B, 1); EOT holds the largest id
    return (positions > 0) & (positions < eot_positions)


def mask_probabilities(noise: torch.Tensor, valid: torch.Tensor, p: float, *, clip: bool = True) -> torch.Tensor:
    """r'_i = r_i - mean(r over the caption's valid tokens) + p, clipped to [0, 1], 0 on invalid tokens.

    noise (B, N) per-token noise r = 1 - max cosine, valid (B, N) bool -> (B, N) float32.
    """
    noise = noise.float().masked_fill(~valid, 0.0)
    counts = valid.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    centred = noise - noise.sum(dim=1, keepdim=True) / counts + p
    if clip:
        centred = centred.clamp(0.0, 1.0)
    return centred.masked_fill(~valid, 0.0)


def uniform_probabilities(valid: torch.Tensor, p: float) -> torch.Tensor:
    """The EM baseline, and NAM's first epoch: every valid token has probability p."""
    return valid.float() * p


def apply_mask(
    ids: torch.Tensor, probabilities: torch.Tensor, valid: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws tokens with `probabilities` and corrupts them BERT-style; at least one per caption.

    ids, probabilities, valid: (B, N). Returns (masked ids (B, N), drawn (B, N) bool). A caption with no
    drawn token gets its most probable valid token drawn (ties: a random one), as the reference
    implementation guarantees one masked token per caption. Random replacements come from the
    ordinary vocabulary, never SOT, EOT or <|mask|>, so EOT pooling by argmax stays correct.
    """
    uniform = torch.rand(ids.shape, generator=generator, device=ids.device)
    drawn = (uniform < probabilities) & valid
    has_valid = valid.any(dim=1)
    needs_one = has_valid & ~drawn.any(dim=1)
    if needs_one.any():
        tie_break = torch.rand(ids.shape, generator=generator, device=ids.device) * 1e-6
        preference = (probabilities + tie_break).masked_fill(~valid, -1.0)
        forced = torch.zeros_like(drawn).scatter_(1, preference.argmax(dim=1, keepdim=True), True)
        drawn |= forced & needs_one.unsqueeze(1)

    action = torch.rand(ids.shape, generator=generator, device=ids.device)
    to_mask = drawn & (action < MASK_REPLACE_SHARE)
    to_random = drawn & (action >= MASK_REPLACE_SHARE) & (action < MASK_REPLACE_SHARE + RANDOM_REPLACE_SHARE)
    random_ids = torch.randint(1, MASK_ID, ids.shape, generator=generator, device=ids.device)
    masked = torch.where(to_mask, torch.full_like(ids, MASK_ID), ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, drawn


__all__ = ["apply_mask", "mask_probabilities", "uniform_probabilities", "valid_token_mask"]
