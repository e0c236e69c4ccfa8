"""IRRA's MLM input for one step: which words of a caption the cross-modal MLM head (engine/model/heads.py) must
predict, drawn uniformly and corrupted BERT-style with NAM's own `apply_mask`, so both maskings share one rule."""

from __future__ import annotations

import torch

from engine.method.nam import apply_mask, uniform_probabilities, valid_token_mask


def mlm_masked_captions(
    ids: torch.Tensor, mask_prob: float, generator: torch.Generator, *, force_mask: str = "most_probable"
) -> tuple[torch.Tensor, torch.Tensor]:
    """IRRA's MLM input: each valid token (strictly between SOT and EOT, so never SOT, EOT or padding) is drawn with
    probability `mask_prob`, at least one per caption (`force_mask`'s rule), and corrupted BERT-style by
    `apply_mask`.

    ids (B, N) -> (corrupted ids (B, N), drawn (B, N) bool); the loss predicts ids[drawn]."""
    valid = valid_token_mask(ids)
    return apply_mask(ids, uniform_probabilities(valid, mask_prob), valid, generator, force_mask=force_mask)


def mlm_branch(
    ids: torch.Tensor,
    text_ids: torch.Tensor,
    *,
    mask_prob: float,
    shared_caption: bool,
    generator: torch.Generator,
    device: torch.device,
    force_mask: str = "most_probable",
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """IRRA's MLM inputs for one step: 15% of T_full's words drawn BERT-style (`mlm_masked_captions`).

    ids (B, N) is T_full, text_ids (B, N) the caption SDM would read. Returns the caption SDM and ID read (the MLM
    caption itself when `shared_caption`, as IRRA's released code does), the forward's MLM arguments, and the
    drawn positions (B, N) bool on `device`, which the MLM loss predicts."""
    mlm_ids, drawn = mlm_masked_captions(ids, mask_prob, generator, force_mask=force_mask)
    drawn = drawn.to(device, non_blocking=True)
    if shared_caption:
        return mlm_ids, {"mlm_positions": drawn}, drawn
    return text_ids, {"mlm_ids": mlm_ids.to(device, non_blocking=True), "mlm_positions": drawn}, drawn


__all__ = ["mlm_branch", "mlm_masked_captions"]
