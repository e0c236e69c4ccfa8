"""eval.metrics against hand-computed numbers and a plain per-query numpy reference (docs/method.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eval.metrics import image_to_text_metrics, retrieval_metrics, retrieval_metrics_from_features

METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def reference_metrics(similarity: np.ndarray, query_pids: np.ndarray, gallery_pids: np.ndarray) -> dict[str, float]:
    """One query at a time, written straight from the definitions; stable sort keeps gallery order on ties."""
    per_query: dict[str, list[float]] = {key: [] for key in METRIC_KEYS}
    skipped = 0
    for scores, pid in zip(similarity, query_pids, strict=True):
        order = np.argsort(-scores, kind="stable")
        relevant = [bool(gallery_pids[g] == pid) for g in order]
        num_hits = sum(relevant)
        if num_hits == 0:
            skipped += 1
            continue
        for k in (1, 5, 10):
            per_query[f"R{k}"].append(float(any(relevant[:k])))
        hit_ranks = [rank for rank, rel in enumerate(relevant, start=1) if rel]
        per_query["mAP"].append(sum(i / rank for i, rank in enumerate(hit_ranks, start=1)) / num_hits)
        per_query["mINP"].append(num_hits / hit_ranks[-1])
    result: dict[str, float] = {key: 100.0 * float(np.mean(values)) for key, values in per_query.items()}
    result["num_queries"] = len(similarity) - skipped
    result["num_queries_without_positive"] = skipped
    return result


def random_case(seed: int, *, num_queries: int, num_gallery: int, num_pids: int) -> tuple[torch.Tensor, ...]:
    """Similarities rounded to one decimal, so ties are everywhere; pids drawn from a small set."""
    generator = torch.Generator().manual_seed(seed)
    similarity = torch.round(torch.rand(num_queries, num_gallery, generator=generator) * 10) / 10
    query_pids = torch.randint(0, num_pids, (num_queries,), generator=generator)
    gallery_pids = torch.randint(0, num_pids, (num_gallery,), generator=generator)
    return similarity, query_pids, gallery_pids


def assert_metrics_close(actual: dict[str, float], expected: dict[str, float], *, rel: float = 1e-12) -> None:
    for key in METRIC_KEYS:
        assert actual[key] == pytest.approx(expected[key], rel=rel, abs=1e-12), key
    assert actual["num_queries"] == expected["num_queries"]
    assert actual["num_queries_without_positive"] == expected["num_queries_without_positive"]


def test_hand_computed_example() -> None:
    gallery_pids = torch.tensor([1, 2, 1, 3, 2])
    query_pids = torch.tensor([1, 2, 3, 9])
    similarity = torch.tensor(
        [
            # pid 1: ranking g0 g1 g3 g4 g2 -> rel 1 0 0 0 1; AP = (1/1 + 2/5) / 2 = 0.7; INP = 2/5 = 0.4
            [0.9, 0.8, 0.1, 0.7, 0.3],
            # pid 2: g3, then the 0.5 tie in gallery order g0 g2 g4, then g1 -> rel 0 0 0 1 1
            #        R1 = 0, R5 = 1; AP = (1/4 + 2/5) / 2 = 0.325; INP = 2/5 = 0.4
            [0.5, 0.2, 0.5, 0.9, 0.5],
            # pid 3: all tied, gallery order g0..g4 -> rel 0 0 0 1 0; AP = 1/4; INP = 1/4
            [0.0, 0.0, 0.0, 0.0, 0.0],
            # pid 9: no positive in the gallery -> left out of every mean, counted
            [0.3, 0.2, 0.1, 0.0, 0.4],
        ]
    )
    metrics = retrieval_metrics(similarity, query_pids, gallery_pids)
    # R1 = 1/3; R5 = R10 = 3/3 (the gallery has only 5 items)
    assert metrics["R1"] == pytest.approx(100 / 3)
    assert metrics["R5"] == pytest.approx(100.0)
    assert metrics["R10"] == pytest.approx(100.0)
    # mAP = (0.7 + 0.325 + 0.25) / 3 = 0.425; mINP = (0.4 + 0.4 + 0.25) / 3 = 0.35
    assert metrics["mAP"] == pytest.approx(42.5)
    assert metrics["mINP"] == pytest.approx(35.0)
    assert metrics["num_queries"] == 3
    assert metrics["num_queries_without_positive"] == 1


def test_single_hit_at_rank_seven_separates_r5_from_r10() -> None:
    gallery_pids = torch.tensor([0] * 6 + [7] + [0] * 5)  # G = 12, the one positive is g6
    similarity = torch.linspace(1.0, 0.0, 12)[None, :]  # ranking is gallery order -> hit at rank 7
    metrics = retrieval_metrics(similarity, torch.tensor([7]), gallery_pids)
    # R1 = R5 = 0, R10 = 1; AP = (1/7) / 1; INP = 1/7
    assert (metrics["R1"], metrics["R5"], metrics["R10"]) == (0.0, 0.0, 100.0)
    assert metrics["mAP"] == pytest.approx(100 / 7)
    assert metrics["mINP"] == pytest.approx(100 / 7)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("num_queries", "num_gallery", "num_pids"), [(37, 23, 5), (64, 77, 12), (5, 3, 2)])
def test_matches_per_query_reference_with_ties(seed: int, num_queries: int, num_gallery: int, num_pids: int) -> None:
    similarity, query_pids, gallery_pids = random_case(
        seed, num_queries=num_queries, num_gallery=num_gallery, num_pids=num_pids
    )
    if not bool(torch.isin(query_pids, gallery_pids).any()):
        pytest.skip("this draw has no query with a positive")
    expected = reference_metrics(similarity.numpy(), query_pids.numpy(), gallery_pids.numpy())
    assert_metrics_close(retrieval_metrics(similarity, query_pids, gallery_pids, chunk_size=7), expected)


def test_chunk_size_does_not_change_results() -> None:
    similarity, query_pids, gallery_pids = random_case(3, num_queries=50, num_gallery=31, num_pids=6)
    results = [retrieval_metrics(similarity, query_pids, gallery_pids, chunk_size=c) for c in (1, 7, 50, 4096)]
    for other in results[1:]:
        assert_metrics_close(other, results[0], rel=1e-13)


def test_float64_and_float32_inputs_agree() -> None:
    similarity, query_pids, gallery_pids = random_case(4, num_queries=20, num_gallery=15, num_pids=4)
    assert_metrics_close(
        retrieval_metrics(similarity.double(), query_pids, gallery_pids),
        retrieval_metrics(similarity, query_pids, gallery_pids),
    )


def test_query_without_positive_is_excluded_and_counted() -> None:
    similarity, query_pids, gallery_pids = random_case(5, num_queries=30, num_gallery=20, num_pids=4)
    query_pids[::3] = 100  # a pid the gallery never has
    metrics = retrieval_metrics(similarity, query_pids, gallery_pids, chunk_size=4)
    assert metrics["num_queries_without_positive"] == 10
    assert metrics["num_queries"] == 20
    assert not any(math.isnan(metrics[key]) for key in METRIC_KEYS)
    keep = query_pids != 100
    assert_metrics_close(
        {**retrieval_metrics(similarity[keep], query_pids[keep], gallery_pids), "num_queries_without_positive": 10},
        metrics,
    )


def test_chunk_made_only_of_queries_without_positive() -> None:
    similarity = torch.rand(4, 3)
    metrics = retrieval_metrics(similarity, torch.tensor([9, 9, 9, 1]), torch.tensor([1, 2, 3]), chunk_size=2)
    assert metrics["num_queries"] == 1
    assert metrics["num_queries_without_positive"] == 3
    assert metrics["R10"] == 100.0


def test_no_query_with_positive_raises() -> None:
    with pytest.raises(ValueError, match="no query has a positive"):
        retrieval_metrics(torch.rand(3, 4), torch.tensor([7, 8, 9]), torch.tensor([0, 1, 2, 3]))


def test_perfect_ranking_scores_100_everywhere() -> None:
    gallery_pids = torch.arange(6).repeat_interleave(3)  # 6 ids x 3 images
    query_pids = torch.arange(6).repeat_interleave(2)  # 2 captions per id
    similarity = (query_pids[:, None] == gallery_pids[None, :]).float()  # positives tie at the top
    metrics = retrieval_metrics(similarity, query_pids, gallery_pids)
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(100.0), key


def test_reversed_ranking() -> None:
    gallery_pids = torch.tensor([5, 5, 0, 1, 2, 3, 4, 6, 7, 8])  # two positives, G = 10
    similarity = -torch.arange(10, dtype=torch.float32)[None, :]  # gallery order ranks positives first ...
    best = retrieval_metrics(similarity, torch.tensor([5]), gallery_pids)
    worst = retrieval_metrics(-similarity, torch.tensor([5]), gallery_pids)  # ... reversed: ranks 10 (g1) and 9 (g0)
    assert best["mAP"] == pytest.approx(100.0) and best["mINP"] == pytest.approx(100.0)
    # hits at ranks 9 and 10: R1 = R5 = 0, R10 = 1; AP = (1/9 + 2/10) / 2; INP = 2/10
    assert (worst["R1"], worst["R5"], worst["R10"]) == (0.0, 0.0, 100.0)
    assert worst["mAP"] == pytest.approx(100 * (1 / 9 + 2 / 10) / 2)
    assert worst["mINP"] == pytest.approx(20.0)


@pytest.mark.parametrize("seed", range(4))
def test_metric_bounds(seed: int) -> None:
    similarity, query_pids, gallery_pids = random_case(seed, num_queries=40, num_gallery=60, num_pids=8)
    metrics = retrieval_metrics(similarity, query_pids, gallery_pids)
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 100.0, key
    assert metrics["R1"] <= metrics["R5"] <= metrics["R10"]
    assert metrics["mINP"] > 0.0  # every query with a positive has INP >= 1 / G
    assert metrics["num_queries"] + metrics["num_queries_without_positive"] == 40


def test_image_to_text_is_the_transposed_ranking() -> None:
    similarity, caption_pids, image_pids = random_case(6, num_queries=33, num_gallery=12, num_pids=5)
    expected = reference_metrics(similarity.T.numpy(), image_pids.numpy(), caption_pids.numpy())
    assert_metrics_close(image_to_text_metrics(similarity, caption_pids, image_pids, chunk_size=5), expected)


def test_accepts_pid_lists() -> None:
    metrics = retrieval_metrics(torch.tensor([[0.2, 0.9]]), [1], [0, 1])
    assert metrics["R1"] == 100.0


@pytest.mark.parametrize(
    ("similarity", "query_pids", "gallery_pids", "kwargs", "message"),
    [
        (torch.rand(3, 4), torch.zeros(2), torch.zeros(4), {}, r"query_pids shape \(2,\) .* similarity shape \(3, 4\)"),
        (
            torch.rand(3, 4),
            torch.zeros(3),
            torch.zeros(5),
            {},
            r"gallery_pids shape \(5,\) .* similarity shape \(3, 4\)",
        ),
        (torch.rand(3, 4), torch.zeros(3, 1), torch.zeros(4), {}, r"query_pids shape \(3, 1\)"),
        (torch.rand(4), torch.zeros(1), torch.zeros(4), {}, r"2-D .* \(got \(4,\)\)"),
        (torch.ones(3, 4, dtype=torch.long), torch.zeros(3), torch.zeros(4), {}, "floating-point"),
        (torch.rand(0, 4), torch.zeros(0), torch.zeros(4), {}, "at least one query"),
        (torch.full((2, 2), float("nan")), torch.zeros(2), torch.zeros(2), {}, "NaN"),
        (torch.rand(2, 2), torch.zeros(2), torch.zeros(2), {"chunk_size": 0}, "chunk_size must be a positive int"),
    ],
)
def test_invalid_inputs_give_one_line_errors(
    similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        retrieval_metrics(similarity, query_pids, gallery_pids, **kwargs)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("memory_budget", [1, 5_000, 1 << 30])  # chunks of 1 query, a few, all at once
def test_from_features_equals_the_full_cosine_matrix(memory_budget: int):
    generator = torch.Generator().manual_seed(5)
    queries, gallery = torch.randn(37, 8, generator=generator), torch.randn(23, 8, generator=generator)
    query_pids = torch.randint(0, 6, (37,), generator=generator)
    gallery_pids = torch.randint(0, 6, (23,), generator=generator)
    full = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
    expected = retrieval_metrics(full, query_pids, gallery_pids)
    got = retrieval_metrics_from_features(queries * 3.0, gallery, query_pids, gallery_pids, memory_budget=memory_budget)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def test_from_features_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same D"):
        retrieval_metrics_from_features(torch.randn(3, 4), torch.randn(5, 6), torch.arange(3), torch.arange(5))
    with pytest.raises(ValueError, match="query_pids shape"):
        retrieval_metrics_from_features(torch.randn(3, 4), torch.randn(5, 4), torch.arange(4), torch.arange(5))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics_from_features(
            torch.full((3, 4), float("nan")), torch.randn(5, 4), torch.arange(3), torch.arange(5)
        )
