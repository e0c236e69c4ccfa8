"""Batches as random samples: caption passes in the reader and the batch-composition benchmark on a small
metadata-only pack (the full 100,000-image figures come from the benchmark itself)."""

from __future__ import annotations

import json
import random

from benchmarks.benchmark_batch_composition import main as composition_main
from benchmarks.benchmark_batch_composition import measures
from data.caption_stream import expand
from data.order import interleave
from data.records import RawRecord


def test_every_caption_of_an_image_comes_out_in_exactly_one_pass_and_passes_differ():
    meta = {"pid": 7, "image_index": 7, "captions": [{"caption_id": 28 + j} for j in range(4)]}
    record = RawRecord("000000007", b"", json.dumps(meta).encode(), b"a\nb\nc\nd")
    for epoch in range(3):
        per_pass = [
            [
                s.caption_id
                for s in expand(record, sampling="every_caption", seed=0, epoch=epoch, passes=4, pass_index=k)
            ]
            for k in range(4)
        ]
        assert [len(p) for p in per_pass] == [1, 1, 1, 1] and sorted(sum(per_pass, [])) == [28, 29, 30, 31]
    broken = RawRecord("000000008", b"", b"{not json", b"a")
    problems = [
        [type(x).__name__ for x in expand(broken, sampling="every_caption", seed=0, epoch=0, passes=4, pass_index=k)]
        for k in range(4)
    ]
    assert problems == [["Problem"], [], [], []]  # a malformed record is counted once per epoch


def test_interleave_yields_every_item_once_and_mixes_the_sources():
    sources = [iter(range(i * 100, i * 100 + 50)) for i in range(6)]
    out = list(interleave(sources, width=3, rng=random.Random(0)))
    assert sorted(out) == sorted(x for i in range(6) for x in range(i * 100, i * 100 + 50))
    assert len({x // 100 for x in out[:30]}) == 3  # three shards open at once from the start


def test_measures_count_same_image_neighbours_and_spans():
    step = [[(10, 1), (10, 1), (11, 2)], [(50, 3), (90, 4), (70, 5)]]  # two rank batches of (name position, pid)
    result = measures([step])
    assert result["same_image"] == 2 / 6 and result["name_neighbour"] == 3 / 6 and result["same_pid"] == 2 / 6
    assert result["median_span"] == 80 and result["median_rank_span"] == (1 + 40) / 2


def test_small_simulated_pack_meets_the_bar(tmp_path, capsys):
    out = tmp_path / "figures.json"
    args = ["--simulate", "1600", "--world-size", "2", "--workers", "2", "--batch-size", "16"]
    composition_main([*args, "--images-per-shard", "100", "--shuffle-buffer", "200", "--json", str(out)])
    assert "bar met" in capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert figures["reader"]["same_image"] <= 1.5 * figures["uniform"]["same_image"]
    assert figures["reader"]["name_neighbour"] <= 1.5 * figures["uniform"]["name_neighbour"]
    assert 190 <= figures["global_batches"] <= 6400 // 32  # one epoch of 6,400 captions, partial batches dropped


def test_without_caption_passes_captions_of_an_image_cluster(capsys):
    args = ["--simulate", "1600", "--world-size", "2", "--workers", "2", "--batch-size", "16"]
    composition_main([*args, "--images-per-shard", "100", "--shuffle-buffer", "200", "--no-spread-captions"])
    assert "bar MISSED" in capsys.readouterr().out  # the check can fail: one pass keeps an image's captions close
