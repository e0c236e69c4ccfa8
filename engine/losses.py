"""Similarity distribution matching (SDM), the pretraining loss of METHOD.md §5.

Pure function of the (already gathered) global batch: the distributed gather lives in
`engine.collectives`, so that this file is the math and nothing else."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sdm_loss(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    pids: torch.Tensor,
    temperature: float = 0.02,
    eps: float = 1e-8,
) -> torch.Tensor:
    """L = L_i2t + L_t2i with L_i2t = mean_i sum_j p_ij (log p_ij - log(q_ij + eps)).

    p_ij = softmax_j(cos(v_i, t_j) / temperature) and q_ij = y_ij / sum_b y_ib, y_ij = [pid_i == pid_j].
    L_t2i swaps images and texts. Inputs: image_feats (B, E), text_feats (B, E), pids (B,).
    """
    if image_feats.shape != text_feats.shape or image_feats.dim() != 2:
        raise ValueError(
            f"sdm_loss needs image and text features of equal shape (B, E); got {tuple(image_feats.shape)} and {tuple(text_feats.shape)}"
        )
    if pids.shape != image_feats.shape[:1]:
        raise ValueError(
            f"sdm_loss needs one pid per row; got pids {tuple(pids.shape)} for {image_feats.shape[0]} rows"
        )
    image_norm = F.normalize(image_feats.float(), dim=-1)
    text_norm = F.normalize(text_feats.float(), dim=-1)
    logits_i2t = image_norm @ text_norm.t() / temperature  # (B, B)
    same_pid = (pids.view(-1, 1) == pids.view(1, -1)).float()  # (B, B), symmetric
    log_q = torch.log(same_pid / same_pid.sum(dim=1, keepdim=True) + eps)

    def matching_term(logits: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()

    return matching_term(logits_i2t) + matching_term(logits_i2t.t())
