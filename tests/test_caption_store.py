"""The captioning run's bookkeeping without a model: part files, torn lines, settings, done markers, the merge, and
the three things read from packed shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.captioning.images import list_shards
from data.captioning.instructions import CaptioningError
from data.captioning.store import CaptionStore


def row(image: str, caption: str = "a person", dirty: bool = False) -> dict:
    return {"image": image, "caption": caption, "template": 3, "dirty": dirty}


def test_a_torn_last_line_is_cut_off_before_the_next_append(tmp_path: Path):
    store = CaptionStore(tmp_path / "Td-m.json")
    writer = store.writer(0)
    writer.write([row("a.jpg"), row("b.jpg")], [])
    writer.close()
    part = store.parts / "rank00000.jsonl"
    with part.open("a") as handle:
        handle.write('{"image": "c.jpg", "capt')  # killed mid-write
    assert sorted(store.read().captions) == ["a.jpg", "b.jpg"]
    writer = store.writer(0)
    writer.write([row("c.jpg")], [])
    writer.close()
    assert [json.loads(line)["image"] for line in part.read_text().splitlines()] == ["a.jpg", "b.jpg", "c.jpg"]


def test_the_merge_keeps_one_caption_per_image_and_only_failures_never_captioned(tmp_path: Path):
    store = CaptionStore(tmp_path / "Td-m.json")
    rank0, rank1 = store.writer(0), store.writer(1)
    rank0.write([row("b.jpg", "first"), row("a.jpg", "a [hair description] man", dirty=True)], [])
    rank1.write([row("b.jpg", "second")], [{"image": "c.jpg", "template": 1, "stage": "read", "reason": "old"}])
    rank1.write([], [{"image": "c.jpg", "template": 1, "stage": "read", "reason": "new"}])
    rank0.write([], [{"image": "d.jpg", "template": 2, "stage": "empty", "reason": "empty output"}])
    rank0.write([row("d.jpg", "retried")], [])
    rank0.close(), rank1.close()
    assert store.finished_names() == ({"a.jpg", "b.jpg", "d.jpg"}, {"c.jpg"})
    summary = store.merge()
    assert (summary.captions, summary.flagged, summary.failed) == (3, 1, 1)
    assert json.loads(store.out.read_text()) == {
        "a.jpg": "a [hair description] man",
        "b.jpg": "first",
        "d.jpg": "retried",
    }
    log = [json.loads(line) for line in store.log.read_text().splitlines()]
    assert [(r["image"], r["template"], r["dirty"]) for r in log] == [
        ("a.jpg", 3, True),
        ("b.jpg", 3, False),
        ("d.jpg", 3, False),
    ]
    assert [json.loads(line)["reason"] for line in store.failures.read_text().splitlines()] == ["new"]


def test_done_markers_count_only_the_current_world_size(tmp_path: Path):
    store = CaptionStore(tmp_path / "Ts-m.json")
    store.parts.mkdir()
    store.mark_done(0, 2)
    assert not store.all_done(2)
    store.mark_done(1, 3)  # left by an earlier run on 3 ranks
    assert not store.all_done(2)
    store.mark_done(1, 2)
    assert store.all_done(2)
    store.clear_done(1)
    assert not store.all_done(2) and not store.all_done(3)


def test_resuming_with_other_settings_is_refused_and_names_the_setting(tmp_path: Path):
    store = CaptionStore(tmp_path / "Td-m.json")
    store.check_settings({"mode": "dynamic", "seed": 0, "max_new_tokens": 160})
    store.check_settings({"mode": "dynamic", "seed": 0, "max_new_tokens": 160})
    writer = store.writer(0)
    writer.write([{"image": "a.jpg", "caption": "a man", "template": 1, "dirty": False}], [])
    writer.close()
    with pytest.raises(CaptioningError, match="was made with max_new_tokens=160, this run has 64"):
        store.check_settings({"mode": "dynamic", "seed": 0, "max_new_tokens": 64})


def test_a_run_that_wrote_no_caption_does_not_pin_its_settings(tmp_path: Path):
    store = CaptionStore(tmp_path / "Td-m.json")
    store.check_settings({"mode": "dynamic", "model": "/models/typo"})
    store.check_settings({"mode": "dynamic", "model": "/models/qwen"})  # replaces them
    assert json.loads((store.parts / "run.json").read_text())["model"] == "/models/qwen"
    writer = store.writer(0)
    writer.write([], [{"image": "a.jpg", "template": 1, "stage": "generate", "reason": "bad model"}])
    writer.close()
    store.check_settings({"mode": "dynamic", "model": "/models/qwen2"})  # failures only: moved aside, not deleted
    moved = list(tmp_path.glob("Td-m.parts.old-*"))
    assert len(moved) == 1 and "bad model" in (moved[0] / "rank00000.failures.jsonl").read_text()
    assert store.finished_names() == (set(), set())


def _image_bytes(colour: tuple[int, int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 32), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_shards_are_read_through_the_manifest_list_the_image_bytes_and_the_meta_file_name(tmp_path: Path):
    """Only the contract: manifest.json's shard names, <key>.jpg|png, and meta["image"] in <key>.json."""
    with tarfile.open(tmp_path / "s0.tar", "w") as tar:
        _add(tar, "000000000.png", _image_bytes((200, 0, 0), "PNG"))
        _add(tar, "000000000.json", json.dumps({"image": "sub/red.png", "anything": [1]}).encode())
        _add(tar, "000000000.txt", b"captions live wherever")
        _add(tar, "000000001.jpg", _image_bytes((0, 0, 200), "JPEG"))  # no json: skipped
    with tarfile.open(tmp_path / "s1.tar", "w") as tar:
        _add(tar, "000000002.json", json.dumps({"image": "green.jpg"}).encode())
        _add(tar, "000000002.jpg", _image_bytes((0, 200, 0), "JPEG"))
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": [{"name": "s0.tar"}, {"name": "s1.tar"}]}))
    refs = list_shards(tmp_path)
    assert [ref.name for ref in refs] == ["red.png", "green.jpg"]
    assert np.asarray(refs[0].read())[0, 0].tolist() == [200, 0, 0]
    assert np.abs(np.asarray(refs[1].read()).astype(int) - [0, 200, 0]).max() < 8  # JPEG


def test_shards_of_another_format_give_one_line(tmp_path: Path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "lmdb", "shards": [{"name": "s0"}]}))
    with pytest.raises(CaptioningError, match="holds lmdb shards; --shards reads wds and mds shards"):
        list_shards(tmp_path)


def test_mds_shards_give_the_same_images_as_tar_shards(tmp_path: Path):
    from data.pack import pack
    from tests.helpers import caption_files, write_caption_set

    raw = write_caption_set(tmp_path / "raw", images=10)
    for fmt in ("wds", "mds"):
        pack(raw / "imgs", caption_files(raw), tmp_path / fmt, images_per_shard=4, fmt=fmt)
    tar_refs, mds_refs = list_shards(tmp_path / "wds"), list_shards(tmp_path / "mds")
    assert [r.name for r in mds_refs] == [r.name for r in tar_refs]  # the same (random) packing order
    assert sorted(r.name for r in tar_refs) == [f"{i:05d}.jpg" for i in range(10)]
    for a, b in zip(tar_refs, mds_refs, strict=True):
        assert np.array_equal(np.asarray(a.read()), np.asarray(b.read()))
