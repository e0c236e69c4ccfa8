"""Text-to-image retrieval metrics of the field (METHOD.md §8): R@1/5/10 (CMC), mAP and mINP, in percent.

Each query ranks the whole gallery by similarity, descending; ties keep gallery order (a stable sort, so
the earlier gallery index ranks first). For one query with ranked relevance rel_1..rel_G (rel_k = 1 when
the k-th gallery item has the query's pid) and H = Σ_k rel_k hits:

    R@k  = 1 if Σ_{j<=k} rel_j > 0 else 0
    AP   = Σ_k precision@k · rel_k / H,    precision@k = Σ_{j<=k} rel_j / k
    INP  = H / (rank of the last hit)      (ranks are 1-based)

Each metric is the mean over queries with H > 0, times 100. A query with H = 0 is left out of every mean
and counted in `num_queries_without_positive`, so no metric is ever NaN.

Queries are processed `chunk_size` rows at a time, so memory is O(chunk_size · G) rather than the
O(Q · G) of sorting the whole matrix at once (which runs out of memory on ICFG-PEDES at 12 GB).

Image-to-text retrieval is the same computation on the transposed matrix: `image_to_text_metrics`.
"""

from __future__ import annotations

import torch

RECALL_RANKS = (1, 5, 10)


def retrieval_metrics(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    *,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """R1, R5, R10, mAP, mINP (percent) of ranking the gallery for every query.

    similarity: (Q, G) scores, higher is more similar; query_pids: (Q,); gallery_pids: (G,).
    Returns also `num_queries` (queries with at least one positive, the ones averaged over) and
    `num_queries_without_positive`. Raises ValueError when no query has a positive in the gallery.
    """
    query_pids, gallery_pids = _validated_inputs(similarity, query_pids, gallery_pids, chunk_size=chunk_size)
    num_queries, num_gallery = similarity.shape
    # R@k..., AP, INP summed over queries with a positive, then their count; stays on device until the end
    totals = torch.zeros(len(RECALL_RANKS) + 3, dtype=torch.float64, device=similarity.device)
    for start in range(0, num_queries, chunk_size):
        stop = start + chunk_size
        relevance = _ranked_relevance(similarity[start:stop], query_pids[start:stop], gallery_pids)
        totals += _chunk_totals(relevance)
    *metric_sums, num_with_positive = totals.tolist()  # the one host sync of the evaluation
    num_with_positive = int(num_with_positive)
    if num_with_positive == 0:
        raise ValueError(
            f"no query has a positive in the gallery ({num_queries} queries, {num_gallery} gallery items): "
            "check that query and gallery pids come from the same split and pid convention"
        )
    means = [100.0 * value / num_with_positive for value in metric_sums]
    metrics = {f"R{k}": value for k, value in zip(RECALL_RANKS, means[: len(RECALL_RANKS)], strict=True)}
    metrics["mAP"], metrics["mINP"] = means[-2], means[-1]
    metrics["num_queries"] = num_with_positive
    metrics["num_queries_without_positive"] = num_queries - num_with_positive
    return metrics


def image_to_text_metrics(
    text_image_similarity: torch.Tensor,
    caption_pids: torch.Tensor,
    image_pids: torch.Tensor,
    *,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Image-to-text retrieval: images are the queries, captions the gallery.

    Takes the same (num_captions, num_images) matrix as text-to-image and ranks its transpose.
    """
    return retrieval_metrics(text_image_similarity.T, image_pids, caption_pids, chunk_size=chunk_size)


def _ranked_relevance(similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor) -> torch.Tensor:
    """(C, G) bool: rel[q, k] is True when the gallery item at rank k+1 for query q shares its pid."""
    order = torch.sort(similarity, dim=1, descending=True, stable=True).indices  # (C, G), ties keep gallery order
    return gallery_pids[order] == query_pids[:, None]


def _chunk_totals(relevance: torch.Tensor) -> torch.Tensor:
    """(len(RECALL_RANKS) + 3,) float64: sums of R@k..., AP, INP (as fractions) over the chunk's queries with a
    positive, then how many there were. Queries without one contribute zeros, so nothing is masked and no host
    sync is needed."""
    num_gallery = relevance.shape[1]
    hits_so_far = relevance.cumsum(dim=1, dtype=torch.float64)  # (C, G): Σ_{j<=k} rel_j
    num_hits = hits_so_far[:, -1]  # (C,)
    has_positive = (num_hits > 0).to(torch.float64)  # (C,)
    ranks = torch.arange(1, num_gallery + 1, dtype=torch.float64, device=relevance.device)  # (G,) 1-based

    recalls = [(hits_so_far[:, min(k, num_gallery) - 1] > 0).to(torch.float64) for k in RECALL_RANKS]
    average_precision = (hits_so_far / ranks * relevance).sum(dim=1) / num_hits.clamp(min=1)
    last_hit_rank = (ranks * relevance).amax(dim=1)  # 0 when there is no hit
    inverse_negative_penalty = num_hits / last_hit_rank.clamp(min=1)

    per_query = torch.stack([*recalls, average_precision, inverse_negative_penalty, has_positive], dim=1)  # (C, 6)
    return per_query.sum(dim=0)


def _validated_inputs(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    *,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and values; return the pids as 1-D tensors on the similarity's device."""
    if not isinstance(similarity, torch.Tensor) or similarity.ndim != 2:
        shape = tuple(similarity.shape) if isinstance(similarity, torch.Tensor) else type(similarity).__name__
        raise ValueError(f"similarity must be a 2-D (queries, gallery) tensor (got {shape})")
    if not similarity.is_floating_point():
        raise ValueError(f"similarity must be a floating-point tensor (got {similarity.dtype})")
    if similarity.shape[0] == 0 or similarity.shape[1] == 0:
        raise ValueError(
            f"similarity must have at least one query and one gallery item (got shape {tuple(similarity.shape)})"
        )
    if torch.isnan(similarity).any():  # host sync, once per evaluation
        raise ValueError("similarity contains NaN: rankings would be undefined")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (got {chunk_size!r})")
    query_pids = torch.as_tensor(query_pids, device=similarity.device)
    gallery_pids = torch.as_tensor(gallery_pids, device=similarity.device)
    if query_pids.shape != (similarity.shape[0],):
        raise ValueError(
            f"query_pids shape {tuple(query_pids.shape)} does not match similarity shape {tuple(similarity.shape)} "
            f"(expected ({similarity.shape[0]},))"
        )
    if gallery_pids.shape != (similarity.shape[1],):
        raise ValueError(
            f"gallery_pids shape {tuple(gallery_pids.shape)} does not match similarity shape {tuple(similarity.shape)} "
            f"(expected ({similarity.shape[1]},))"
        )
    return query_pids, gallery_pids
