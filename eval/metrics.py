"""Text-to-image retrieval metrics of the field (docs/method.md): R@1/5/10 (CMC), mAP and mINP, in percent.

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
`retrieval_metrics_from_features` goes further: it computes the cosine similarities chunk by chunk from
the features, so the (Q, G) matrix never exists and memory stays within a budget whatever Q and G.

Image-to-text retrieval is the same computation on the transposed matrix: `image_to_text_metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

RECALL_RANKS = (1, 5, 10)
# Bytes per (query, gallery) entry while a chunk is ranked (measured peak): similarity, sorted values and
# indices, the gathered pids, relevance, running hit counts and the float64 temporaries of AP and INP.
BYTES_PER_RANKED_ENTRY = 64


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
    num_queries = similarity.shape[0]
    chunks = (
        (similarity[start : start + chunk_size], query_pids[start : start + chunk_size])
        for start in range(0, num_queries, chunk_size)
    )
    return _summarise(chunks, gallery_pids, similarity.shape)


def retrieval_metrics_from_features(
    query_feats: torch.Tensor,
    gallery_feats: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    *,
    memory_budget: int = 256 << 20,
) -> dict[str, float]:
    """`retrieval_metrics` of the cosine similarities of (Q, D) queries against (G, D) gallery features,
    computed chunk by chunk so that ranking takes about `memory_budget` bytes beyond the features."""
    if query_feats.ndim != 2 or gallery_feats.ndim != 2 or query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(
            f"features must be (Q, D) and (G, D) with the same D (got {tuple(query_feats.shape)} and "
            f"{tuple(gallery_feats.shape)})"
        )
    num_queries, num_gallery = len(query_feats), len(gallery_feats)
    chunk_size = max(1, memory_budget // max(1, num_gallery * BYTES_PER_RANKED_ENTRY))
    probe = torch.empty(num_queries, num_gallery, device="meta")  # shape-only stand-in for the validation
    query_pids, gallery_pids = _validated_pids(probe, query_pids, gallery_pids, device=query_feats.device)
    if torch.isnan(query_feats).any() or torch.isnan(gallery_feats).any():  # host sync, once per evaluation
        raise ValueError("features contain NaN: rankings would be undefined")
    # Divide by the gallery norms after the product: a normalised copy of a 1 M x 512 gallery would be 2 GB.
    gallery_norms = gallery_feats.float().norm(dim=1).clamp(min=1e-12)  # (G,)

    def chunks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, num_queries, chunk_size):
            stop = start + chunk_size
            queries = F.normalize(query_feats[start:stop].float(), dim=1)  # (C, D)
            yield (queries @ gallery_feats.T.to(queries.dtype)) / gallery_norms, query_pids[start:stop]

    return _summarise(chunks(), gallery_pids, (num_queries, num_gallery))


def _summarise(
    chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], gallery_pids: torch.Tensor, shape: tuple[int, int]
) -> dict[str, float]:
    """Ranks each (similarity chunk, its query pids) and turns the sums into the percentages."""
    num_queries, num_gallery = shape
    # R@k..., AP, INP summed over queries with a positive, then their count; stays on device until the end
    totals = torch.zeros(len(RECALL_RANKS) + 3, dtype=torch.float64, device=gallery_pids.device)
    for similarity, query_pids in chunks:
        totals += _chunk_totals(_ranked_relevance(similarity, query_pids, gallery_pids))
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
    return _validated_pids(similarity, query_pids, gallery_pids, device=similarity.device)


def _validated_pids(
    similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor, *, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pids as 1-D tensors on `device`, checked against the (Q, G) shape of `similarity`."""
    query_pids = torch.as_tensor(query_pids, device=device)
    gallery_pids = torch.as_tensor(gallery_pids, device=device)
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
