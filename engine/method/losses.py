"""Similarity distribution matching (SDM), the pretraining loss of docs/method.md, and IRRA's identity and MLM
losses for fine-tuning (§6).

Pure functions of their inputs: SDM takes the (already gathered) global batch, the distributed gather lives in
`engine.runtime.collectives`, so that this file is the math and nothing else. The identity and MLM losses are
per-sample means over the local batch; DeepSpeed's gradient averaging makes them the global batch's mean."""

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


def id_loss(image_logits: torch.Tensor, text_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """IRRA's identity loss (its `compute_id`): (CE(image_logits, labels) + CE(text_logits, labels)) / 2.

    image_logits, text_logits (B, K) from the one classifier shared by both modalities; labels (B,) in [0, K)."""
    if image_logits.shape != text_logits.shape or image_logits.dim() != 2:
        raise ValueError(
            f"id_loss needs image and text logits of equal shape (B, K); got {tuple(image_logits.shape)} and {tuple(text_logits.shape)}"
        )
    return (F.cross_entropy(image_logits.float(), labels) + F.cross_entropy(text_logits.float(), labels)) / 2


def mlm_loss(logits: torch.Tensor, ids: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the original ids at the drawn (masked) positions only: -mean_{drawn} log p(id).

    ids (B, N) the uncorrupted caption, drawn (B, N) bool; logits (B, N, V) for every position, or (K, V) for the
    K drawn positions in row-major order, as `CrossModalMLM` returns them when given `drawn`. IRRA's
    `compute_mlm` gets the same mean through ignore_index=0 on labels that are 0 off the drawn positions."""
    if ids.shape != drawn.shape:
        raise ValueError(
            f"mlm_loss needs ids and drawn of equal shape (B, N); got {tuple(ids.shape)} and {tuple(drawn.shape)}"
        )
    if logits.dim() == 3:
        logits = logits[drawn]  # (K, V)
    targets = ids[drawn]  # (K,)
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(f"mlm_loss got logits for {logits.shape[0]} positions but {targets.shape[0]} are drawn")
    if targets.numel() == 0:  # only captions without a single word: nothing to predict, and no NaN from an empty mean
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), targets)
