"""Noise-aware masking (NAM) and its uniform baseline (EM), docs/method.md.

Per caption: tokens whose layer-l embedding matches no image patch well are likely noise and get a
higher masking probability. Scores from epoch e drive the masks of epoch e+1 (engine/method/noise_table.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from data.tokenizer import MASK_ID
from engine.config import NamConfig
from engine.method.noise_table import ShardedNoiseTable
from kernels.token_patch_max_cosine import token_patch_max_cosine

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
    ids: torch.Tensor,
    probabilities: torch.Tensor,
    valid: torch.Tensor,
    generator: torch.Generator,
    *,
    force_mask: str = "most_probable",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws tokens with `probabilities` and corrupts them BERT-style; at least one per caption.

    ids, probabilities, valid: (B, N). Returns (masked ids (B, N), drawn (B, N) bool). A caption with a valid
    token but none drawn gets one (`nam.force_mask`): `most_probable` draws its most probable valid token (ties: a
    random one) and corrupts it 80/10/10 like the others; `first_token` is the reference's rule (its
    datasets/bases.py): the token at position 1 is drawn and always becomes <|mask|>. Random replacements come from
    the ordinary vocabulary, never SOT, EOT or <|mask|>, so EOT pooling by argmax stays correct.
    """
    uniform = torch.rand(ids.shape, generator=generator, device=ids.device)
    drawn = (uniform < probabilities) & valid
    has_valid = valid.any(dim=1)
    needs_one = has_valid & ~drawn.any(dim=1)  # (B,)
    first_token = force_mask == "first_token"
    if first_token:
        drawn[:, 1] |= needs_one  # position 1 is valid whenever the caption has a valid token
    elif needs_one.any():
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
    if first_token:
        masked[:, 1] = torch.where(needs_one, torch.full_like(masked[:, 1], MASK_ID), masked[:, 1])
    return masked, drawn


class TokenMasker:
    """The caption masking of a training step under each nam.masking (docs/method.md), and NAM's scoring:

    - `mask`: T_nam from T_full. NAM turns each caption's noise from the previous epoch into masking probabilities
      (Eq. 4: r' = r - mean(r) + p), EM masks every valid token with p, `none` leaves the caption as it is. Epoch
      0 has no scores yet, so NAM masks as EM does then, and so does any caption whose scores are missing.
    - `score`: after the step, r = 1 - max_j cos(t_i, v_j) of every token of T_full against the image's patches
      at layer l (the Triton kernel on CUDA), recorded in the sharded noise table for the next epoch.

    `oracle`, an ablation ceiling only, replaces the model's r by a known one: (caption ids, valid) -> (B, N) noise.
    """

    def __init__(
        self,
        config: NamConfig,
        noise_table: ShardedNoiseTable | None,
        *,
        oracle: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if config.masking == "nam" and noise_table is None:
            raise ValueError("nam.masking=nam needs a noise table")
        self.config, self.noise_table, self.oracle = config, noise_table, oracle

    @property
    def needs_scores(self) -> bool:
        """Whether steps must score T_full (NAM only)."""
        return self.config.masking == "nam"

    def mask(
        self, ids: torch.Tensor, caption_ids: torch.Tensor, *, epoch: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, int]:
        """ids (B, N) -> (T_nam (B, N), how many captions fell back to uniform masking for lack of scores)."""
        if self.config.masking == "none":
            return ids, 0
        valid = valid_token_mask(ids)
        probabilities = uniform_probabilities(valid, self.config.mask_prob)
        unscored = 0
        if self.needs_scores and epoch > 0:  # epoch 0 has no scores yet: r' = p
            noise, known = self.noise_table.lookup(caption_ids, valid)
            scored = mask_probabilities(noise, valid, self.config.mask_prob, clip=self.config.clip)
            probabilities = torch.where(known.unsqueeze(1), scored, probabilities)
            unscored = int((~known).sum())  # host sync: CPU tensors here
        masked, _ = apply_mask(ids, probabilities, valid, generator, force_mask=self.config.force_mask)
        return masked, unscored

    def score(
        self, caption_ids: torch.Tensor, ids: torch.Tensor, score_tokens: torch.Tensor, image_tokens: torch.Tensor
    ) -> None:
        """Records r for every token of T_full: ids (B, N), score_tokens (B, N, E), image_tokens (B, M, E)."""
        valid = valid_token_mask(ids).to(score_tokens.device, non_blocking=True)
        similarity = token_patch_max_cosine(score_tokens, image_tokens, valid, impl=self.config.kernel)  # (B, N)
        noise = 1.0 - similarity  # r = 1 - max_j s_ij, used next epoch
        if self.oracle is not None:
            noise = self.oracle(caption_ids, valid)
        self.noise_table.record(caption_ids, noise, valid)


__all__ = ["TokenMasker", "apply_mask", "mask_probabilities", "uniform_probabilities", "valid_token_mask"]
