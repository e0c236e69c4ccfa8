import json
import tarfile
from pathlib import Path

import pytest

from data.captions import CaptionError, load_captions
from data.pack import main as pack_main
from data.pack import pack
from tests.conftest import SOURCES, caption_files, write_caption_set


def test_dirty_dynamic_captions_take_the_static_caption_of_the_same_captioner(caption_set_dir: Path):
    caption_set = load_captions(caption_files(caption_set_dir))
    assert [s.name for s in caption_set.sources] == list(SOURCES)
    assert len(caption_set.dirty_replaced) == 5  # images 0, 10, 20, 30, 40 of 48
    row = caption_set.captions["00010.jpg"]
    assert row[2] == row[0]  # Td-qwen <- Ts-qwen
    assert all("[" not in text for row in caption_set.captions.values() for text in row)


def test_manifest_counts_ids_and_checksums(packed_shards: Path):
    manifest = json.loads((packed_shards / "manifest.json").read_text())
    assert manifest["num_images"] == 48 and manifest["num_captions"] == 192
    assert manifest["caption_id_space"] == 192
    assert [s["images"] for s in manifest["shards"]] == [12, 12, 12, 12]
    assert manifest["dirty_captions_replaced"] == 5
    caption_ids, pids = [], []
    for shard in manifest["shards"]:
        with tarfile.open(packed_shards / shard["name"]) as tar:
            metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
            assert sum(m.isfile() and m.name.endswith(".jpg") for m in tar.getmembers()) == shard["images"]
        for meta in metas:
            pids.append(meta["pid"])
            caption_ids += [c["caption_id"] for c in meta["captions"]]
            assert [c["source"] for c in meta["captions"]] == list(SOURCES)
            assert [c["caption_id"] for c in meta["captions"]] == [meta["pid"] * 4 + i for i in range(4)]
        assert len(shard["sha256"]) == 64
    assert sorted(pids) == list(range(48))
    assert sorted(caption_ids) == list(range(192))


def test_images_without_captions_and_captions_without_images_are_counted(tmp_path: Path):
    root = write_caption_set(tmp_path / "raw", images=10)
    (root / "imgs" / "00003.jpg").unlink()
    (root / "imgs" / "stray.jpg").write_bytes((root / "imgs" / "00004.jpg").read_bytes())
    manifest = pack(root / "imgs", caption_files(root), tmp_path / "out", images_per_shard=4)
    assert manifest["num_images"] == 9
    assert manifest["images_without_captions"] == {"count": 1, "names": ["stray.jpg"]}
    assert manifest["captions_without_images"] == {"count": 1, "names": ["00003.jpg"]}


def test_bad_inputs_give_one_line_errors(tmp_path: Path, capsys):
    root = write_caption_set(tmp_path / "raw", images=4)
    (root / "Td-shikra.json").write_text("{not json")
    assert (
        pack_main(
            ["--images", str(root / "imgs"), "--captions", *map(str, caption_files(root)), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "Td-shikra.json is not UTF-8 JSON" in capsys.readouterr().err
    (root / "Td-shikra.json").write_text("{}")
    with pytest.raises(CaptionError, match="Td-shikra.json holds no captions"):
        load_captions(caption_files(root))
    with pytest.raises(CaptionError, match="caption file not found"):
        load_captions([tmp_path / "nope.json"])
    with pytest.raises(CaptionError, match="image folder not found"):
        pack(tmp_path / "no_imgs", caption_files(root)[:1], tmp_path / "o")
