"""data.datasets on tiny fake copies of the three annotation formats (docs/method.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from data.datasets import DATASETS, DatasetError, load_split, split_stats
from tests.helpers import cuhk_entry, rstp_entry, write_benchmark

CUHK_ENTRIES = [
    cuhk_entry("train", 1, "train_query/p1_a.jpg", ["a man in red", "red shirt man"]),
    cuhk_entry("train", 1, "train_query/p1_b.jpg", ["man, red top"]),
    cuhk_entry("test", 11, "test_query/p11_a.jpg", ["woman with bag", "bag woman"]),
    cuhk_entry("train", 2, "CUHK01/p2.png", ["blue jeans"]),
    cuhk_entry("val", 7, "val/p7.jpg", ["grey coat", "coat"]),
    cuhk_entry("test", 12, "test_query/p12.jpg", ["child in yellow"]),
    cuhk_entry("test", 11, "test_query/p11_b.jpg", ["same woman, other view"]),
]
ICFG_ENTRIES = [
    cuhk_entry("train", 0, "train/0000/a.jpg", ["black jacket"]),
    cuhk_entry("test", 3, "test/0003/a.jpg", ["white shoes"]),
    cuhk_entry("test", 4, "test/0004/a.jpg", ["green hat"]),
]
RSTP_ENTRIES = [
    rstp_entry("train", 5, "0005_c1_1.jpg", ["one", "two"]),
    rstp_entry("val", 6, "0006_c2_1.jpg", ["three", "four"]),
    rstp_entry("test", 8, "0008_c1_1.jpg", ["five", "six"]),
    rstp_entry("test", 8, "0008_c3_2.jpg", ["seven", "eight"]),
    rstp_entry("test", 9, "0009_c2_1.jpg", ["nine", "ten"]),
]


@pytest.fixture
def cuhk_root(tmp_path: Path) -> Path:
    return write_benchmark(tmp_path / "CUHK-PEDES", "reid_raw.json", CUHK_ENTRIES, path_field="file_path")


@pytest.fixture
def icfg_root(tmp_path: Path) -> Path:
    return write_benchmark(tmp_path / "ICFG-PEDES", "ICFG-PEDES.json", ICFG_ENTRIES, path_field="file_path")


@pytest.fixture
def rstp_root(tmp_path: Path) -> Path:
    return write_benchmark(tmp_path / "RSTPReid", "data_captions.json", RSTP_ENTRIES, path_field="img_path")


def test_registry_names_the_three_benchmarks() -> None:
    assert set(DATASETS) == {"cuhk-pedes", "icfg-pedes", "rstpreid"}
    assert DATASETS["icfg-pedes"].splits == ("train", "test")


def test_cuhk_train_pids_are_id_minus_one_and_captions_flatten_in_file_order(cuhk_root: Path) -> None:
    train = load_split("cuhk-pedes", cuhk_root, "train")
    assert train.dataset == "CUHK-PEDES" and train.split == "train"
    assert train.image_paths == [
        cuhk_root / "imgs" / "train_query/p1_a.jpg",
        cuhk_root / "imgs" / "train_query/p1_b.jpg",
        cuhk_root / "imgs" / "CUHK01/p2.png",
    ]
    assert all(path.is_absolute() and path.is_file() for path in train.image_paths)
    assert train.image_pids == [0, 0, 1]
    assert train.captions == ["a man in red", "red shirt man", "man, red top", "blue jeans"]
    assert train.caption_pids == [0, 0, 0, 1]
    assert train.caption_image_indices == [0, 0, 1, 2]
    assert train.missing_images == []
    assert split_stats(train) == {"ids": 2, "images": 3, "captions": 4}


def test_cuhk_test_split_uses_the_same_pid_rule(cuhk_root: Path) -> None:
    test = load_split("cuhk-pedes", cuhk_root, "test")
    assert [path.name for path in test.image_paths] == ["p11_a.jpg", "p12.jpg", "p11_b.jpg"]
    assert test.image_pids == [10, 11, 10]
    assert test.captions == ["woman with bag", "bag woman", "child in yellow", "same woman, other view"]
    assert test.caption_pids == [10, 10, 11, 10]
    assert split_stats(test) == {"ids": 2, "images": 3, "captions": 4}
    assert load_split("cuhk-pedes", cuhk_root, "val").captions == ["grey coat", "coat"]


def test_icfg_pids_are_ids(icfg_root: Path) -> None:
    test = load_split("icfg-pedes", icfg_root, "test")
    assert test.image_paths == [icfg_root / "imgs/test/0003/a.jpg", icfg_root / "imgs/test/0004/a.jpg"]
    assert test.image_pids == [3, 4]
    assert test.caption_pids == [3, 4]
    assert load_split("icfg-pedes", icfg_root, "train").image_pids == [0]


def test_rstpreid_reads_img_path_and_pids_are_ids(rstp_root: Path) -> None:
    test = load_split("rstpreid", rstp_root, "test")
    assert test.image_paths == [
        rstp_root / "imgs" / name for name in ("0008_c1_1.jpg", "0008_c3_2.jpg", "0009_c2_1.jpg")
    ]
    assert test.image_pids == [8, 8, 9]
    assert test.captions == ["five", "six", "seven", "eight", "nine", "ten"]
    assert test.caption_pids == [8, 8, 8, 8, 9, 9]
    assert test.caption_image_indices == [0, 0, 1, 1, 2, 2]
    assert split_stats(test) == {"ids": 2, "images": 3, "captions": 6}
    assert load_split("rstpreid", rstp_root, "val").image_pids == [6]


def test_dataset_name_is_case_insensitive_and_root_may_be_str(rstp_root: Path) -> None:
    assert load_split("RSTPReid", str(rstp_root), "train").captions == ["one", "two"]


def test_relative_root_gives_absolute_paths(rstp_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(rstp_root.parent)
    train = load_split("rstpreid", rstp_root.name, "train")
    assert train.image_paths == [rstp_root / "imgs" / "0005_c1_1.jpg"]


def test_unknown_dataset_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset 'market1501' \(valid: cuhk-pedes, icfg-pedes, rstpreid\)"):
        load_split("market1501", tmp_path, "test")


def test_benchmark_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


def test_missing_root_names_the_expected_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"root .*nowhere is not a directory .*reid_raw\.json"):
        load_split("cuhk-pedes", tmp_path / "nowhere", "test")


def test_missing_annotation_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"annotation file ICFG-PEDES\.json not found in"):
        load_split("icfg-pedes", tmp_path, "test")


def test_icfg_has_no_val_split(icfg_root: Path) -> None:
    with pytest.raises(DatasetError, match=r"ICFG-PEDES has no split 'val' \(valid: train, test\) in ICFG-PEDES\.json"):
        load_split("icfg-pedes", icfg_root, "val")


def test_split_with_no_entries(tmp_path: Path) -> None:
    root = write_benchmark(tmp_path, "data_captions.json", RSTP_ENTRIES[:1], path_field="img_path")
    with pytest.raises(DatasetError, match=r"data_captions\.json has no entries with split 'test'"):
        load_split("rstpreid", root, "test")


def test_malformed_json_names_the_file_and_position(tmp_path: Path) -> None:
    (tmp_path / "reid_raw.json").write_text('[{"split": "test",', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"reid_raw\.json is not valid JSON: .* line 1 column"):
        load_split("cuhk-pedes", tmp_path, "test")


def test_top_level_must_be_a_list(tmp_path: Path) -> None:
    (tmp_path / "reid_raw.json").write_text('{"split": "test"}', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"reid_raw\.json must hold a JSON list of entries \(got dict\)"):
        load_split("cuhk-pedes", tmp_path, "test")


@pytest.mark.parametrize(
    ("broken_entry", "message"),
    [
        ({"split": "test", "captions": ["x"], "id": 1}, r"entry 1 is missing field 'img_path'"),
        ({"split": "test", "img_path": "a.jpg", "id": 1}, r"entry 1 is missing field 'captions'"),
        ({"split": "test", "img_path": "a.jpg", "captions": ["x"]}, r"entry 1 is missing field 'id'"),
        ({"img_path": "a.jpg", "captions": ["x"], "id": 1}, r"entry 1 is missing field 'split'"),
        ({"split": "test", "img_path": "a.jpg", "captions": "x", "id": 1}, r"entry 1 field 'captions' must be a list"),
        (
            {"split": "test", "img_path": "a.jpg", "captions": ["x"], "id": "1"},
            r"entry 1 field 'id' must be an integer",
        ),
        (
            {"split": "test", "img_path": "", "captions": ["x"], "id": 1},
            r"entry 1 field 'img_path' must be a non-empty",
        ),
        (["not", "an", "object"], r"entry 1 must be a JSON object \(got list\)"),
    ],
)
def test_broken_entry_names_its_index_and_field(tmp_path: Path, broken_entry: Any, message: str) -> None:
    write_benchmark(tmp_path, "data_captions.json", [RSTP_ENTRIES[0], broken_entry], path_field=None)
    with pytest.raises(DatasetError, match=r"data_captions\.json " + message):
        load_split("rstpreid", tmp_path, "train")  # entries of every split are checked, not only the one asked for


def test_missing_images_raise_with_count_and_first_three(tmp_path: Path) -> None:
    entries = [rstp_entry("test", pid, f"{pid:04d}.jpg", [f"caption {pid}"]) for pid in range(6)]
    root = write_benchmark(tmp_path, "data_captions.json", entries, path_field="img_path")
    for pid in (1, 2, 4, 5):
        (root / "imgs" / f"{pid:04d}.jpg").unlink()
    with pytest.raises(DatasetError) as caught:
        load_split("rstpreid", root, "test")
    message = str(caught.value)
    assert "4 of 6 images" in message and "data_captions.json" in message and "skip_missing=True" in message
    assert "0001.jpg" in message and "0002.jpg" in message and "0004.jpg" in message
    assert "0005.jpg" not in message
    assert "\n" not in message


def test_skip_missing_drops_images_with_their_captions(cuhk_root: Path) -> None:
    (cuhk_root / "imgs" / "test_query/p12.jpg").unlink()
    test = load_split("cuhk-pedes", cuhk_root, "test", skip_missing=True)
    assert test.missing_images == [cuhk_root / "imgs" / "test_query/p12.jpg"]
    assert [path.name for path in test.image_paths] == ["p11_a.jpg", "p11_b.jpg"]
    assert test.image_pids == [10, 10]
    assert test.captions == ["woman with bag", "bag woman", "same woman, other view"]
    assert test.caption_pids == [10, 10, 10]
    assert test.caption_image_indices == [0, 0, 1]
    assert split_stats(test) == {"ids": 1, "images": 2, "captions": 3}
