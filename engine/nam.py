"""Noise-aware masking (NAM) and its uniform baseline (EM), METHOD.md §4.

Per caption: tokens whose layer-l embedding matches no image patch well are likely noise and get a
higher masking probability. Scores from epoch e drive the masks of epoch e+1 (`NoiseTable`)."""

from __future__ import annotations

import torch

from engine.tokenizer import EOT_ID, MASK_ID, SOT_ID

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


class NoiseTable:
    """Per-caption, per-token noise r from the caption's last scoring, in one process.

    Storage: float16 (num_captions, N), NaN where never scored: 2 * N bytes per caption
    (154 B at N = 77). This simple table serves one rank; it is correct while each rank keeps
    seeing the same captions every epoch, which the shard-per-rank split of the data path
    guarantees. The sharded table exchanged between ranks is a later issue.
    """

    def __init__(self, num_captions: int, context_length: int) -> None:
        self.scores = torch.full((num_captions, context_length), float("nan"), dtype=torch.float16)

    @property
    def bytes_per_caption(self) -> int:
        return self.scores.shape[1] * self.scores.element_size()

    def record(self, caption_ids: torch.Tensor, noise: torch.Tensor, valid: torch.Tensor) -> None:
        """Stores noise (B, N) of the valid tokens of captions `caption_ids` (B,)."""
        self._check_ids(caption_ids)
        rows = noise.detach().to("cpu", torch.float16).masked_fill(~valid.cpu(), float("nan"))
        self.scores[caption_ids.cpu()] = rows

    def lookup(self, caption_ids: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) ids, (B, N) valid -> (noise (B, N) float32 with 0 where unknown, known (B,) bool).

        A caption is known when every valid token has a score."""
        self._check_ids(caption_ids)
        rows = self.scores[caption_ids.cpu()].float().to(valid.device)  # (B, N)
        known = ~(torch.isnan(rows) & valid).any(dim=1)
        return torch.nan_to_num(rows, nan=0.0), known

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"scores": self.scores}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["scores"].shape != self.scores.shape:
            raise ValueError(
                f"noise table shape {tuple(state['scores'].shape)} does not match this run's {tuple(self.scores.shape)}"
            )
        self.scores = state["scores"].to(torch.float16)

    def _check_ids(self, caption_ids: torch.Tensor) -> None:
        if caption_ids.numel() and (int(caption_ids.min()) < 0 or int(caption_ids.max()) >= self.scores.shape[0]):
            raise IndexError(f"caption id out of range [0, {self.scores.shape[0]}) in the noise table")


__all__ = [
    "EOT_ID",
    "SOT_ID",
    "NoiseTable",
    "apply_mask",
    "mask_probabilities",
    "uniform_probabilities",
    "valid_token_mask",
]
