import json
import tarfile
from pathlib import Path

import pytest

from data.caption_files import CaptionError, load_captions
from data.pack import main as pack_main
from data.pack import pack
from tests.helpers import SOURCES, caption_files, write_caption_set


def test_dirty_dynamic_captions_take_the_static_caption_of_the_same_captioner(caption_set_dir: Path):
    caption_set = load_captions(caption_files(caption_set_dir), dirty_rule="same_captioner")
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
    assert manifest["dirty_captions_replaced"] == {"Ts-qwen": 0, "Ts-shikra": 0, "Td-qwen": 5, "Td-shikra": 0}
    assert manifest["dirty_caption_rule"] == "reference"
    caption_ids, pids = [], []
    for shard in manifest["shards"]:
        with tarfile.open(packed_shards / shard["name"]) as tar:
            metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
            texts = [
                tar.extractfile(m).read().decode().split("\n") for m in tar.getmembers() if m.name.endswith(".txt")
            ]
            assert sum(m.isfile() and m.name.endswith(".jpg") for m in tar.getmembers()) == shard["images"]
        assert [len(t) for t in texts] == [len(m["captions"]) for m in metas]  # one line per caption
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


def test_mds_shards_hold_the_same_records_and_a_streaming_index(caption_set_dir: Path, tmp_path: Path):
    from streaming import StreamingDataset

    manifest = pack(
        caption_set_dir / "imgs", caption_files(caption_set_dir), tmp_path / "mds", images_per_shard=12, fmt="mds"
    )
    assert manifest["format"] == "mds" and [s["name"] for s in manifest["shards"]][0] == "shard-000000"
    # mosaicml-streaming's own dataset class reads the merged index over our partitions
    dataset = StreamingDataset(local=str(tmp_path / "mds"), shuffle=False, batch_size=1)
    assert len(dataset) == 48
    meta = json.loads(dataset[0]["json"])
    assert meta["image_index"] == 0 and len(dataset[0]["txt"].split(b"\n")) == 4


def test_parallel_packing_by_target_size_matches_one_worker(caption_set_dir: Path, tmp_path: Path):
    size = sum(p.stat().st_size + 2048 for p in (caption_set_dir / "imgs").iterdir()) // 5  # 2048: tar headers
    one, two = (
        pack(
            caption_set_dir / "imgs",
            caption_files(caption_set_dir),
            tmp_path / f"workers{workers}",
            images_per_shard=None,
            shard_bytes=size,
            workers=workers,
        )
        for workers in (1, 2)
    )
    assert 4 <= len(one["shards"]) <= 7 and sum(s["images"] for s in one["shards"]) == 48
    assert one["shards"] == two["shards"]  # same plan, same bytes (checksums included)


def test_an_interrupted_packing_resumes_with_only_the_missing_shards(packed_shards: Path, caption_set_dir: Path):
    before = json.loads((packed_shards / "manifest.json").read_text())
    kept = packed_shards / "shard-000000.tar"
    kept_mtime = kept.stat().st_mtime_ns
    # as if killed after two shards: the others, their notes and the manifest are not there
    for name in ("shard-000002.tar", "shard-000003.tar"):
        (packed_shards / name).unlink()
        (packed_shards / f".{name}.done").unlink()
    (packed_shards / "manifest.json").unlink()
    (packed_shards / ".shard-000003.tar.partial").write_bytes(b"half a shard")
    after = pack(caption_set_dir / "imgs", caption_files(caption_set_dir), packed_shards, images_per_shard=12)
    assert after == before and kept.stat().st_mtime_ns == kept_mtime
    with pytest.raises(CaptionError, match="holds a packing of other inputs or options"):
        pack(caption_set_dir / "imgs", caption_files(caption_set_dir), packed_shards, images_per_shard=6)


def test_a_caption_file_that_lost_every_caption_is_named(tmp_path: Path):
    root = write_caption_set(tmp_path / "raw", images=4)
    (root / "Ts-shikra.json").write_text(json.dumps({"00000.jpg": "  ", "00001.jpg": ""}))
    with pytest.raises(CaptionError, match="Ts-shikra.json lost every caption"):
        load_captions(caption_files(root))
    dirty = {f"{i:05d}.jpg": "a [gender description] in <colour>" for i in range(4)}  # dirty by either rule
    for static in ("Ts-shikra", "Ts-qwen"):  # no static caption of these images to replace a dirty one with
        (root / f"{static}.json").write_text(json.dumps({"other.jpg": "a man"}))
    (root / "Td-qwen.json").write_text(json.dumps(dirty))
    with pytest.raises(CaptionError, match="Td-qwen.json lost every caption"):
        load_captions(caption_files(root))


def test_reference_rule_checks_every_caption_and_draws_between_the_static_ones(tmp_path: Path):
    root = write_caption_set(tmp_path / "raw", images=40, dirty_every=1000)  # image 0's Td-qwen is dirty
    files = caption_files(root)
    rows = {name: json.loads(f.read_text()) for name, f in zip(SOURCES, files, strict=True)}
    for index in range(40):
        rows["Td-shikra"][f"{index:05d}.jpg"] = "A [person/woman/man] with [hair description]."
    rows["Ts-qwen"]["00000.jpg"] = "a <ref>person</ref> in red"  # a static caption can be dirty too
    rows["Td-qwen"]["00001.jpg"] = "a [person/woman/man] in blue"  # no 'description]', no '<': kept by the reference
    for name, f in zip(SOURCES, files, strict=True):
        f.write_text(json.dumps(rows[name]))
    caption_set = load_captions(files, seed=3)
    assert caption_set.counts_per_source(caption_set.dirty_replaced) == {
        "Ts-qwen": 1,
        "Ts-shikra": 0,
        "Td-qwen": 1,
        "Td-shikra": 40,
    }
    assert caption_set.captions["00001.jpg"][2] == "a [person/woman/man] in blue"
    assert caption_set.captions["00000.jpg"][0] == caption_set.captions["00000.jpg"][1]  # the only clean static one
    drawn = [caption_set.captions[f"{i:05d}.jpg"][3] for i in range(1, 40)]
    statics = [tuple(caption_set.captions[f"{i:05d}.jpg"][:2]) for i in range(1, 40)]
    assert all(text in pair for text, pair in zip(drawn, statics, strict=True))
    assert 5 < sum(text == pair[0] for text, pair in zip(drawn, statics, strict=True)) < 34  # both are drawn
    again = load_captions(files, seed=3)
    assert again.captions == caption_set.captions  # seeded
    other = load_captions(files, dirty_rule="same_captioner")
    assert other.counts_per_source(other.dirty_replaced) == {
        "Ts-qwen": 0,
        "Ts-shikra": 0,
        "Td-qwen": 2,  # the [person/woman/man] slot counts here
        "Td-shikra": 40,
    }


def test_images_are_packed_in_a_seeded_random_order_recorded_in_the_manifest(caption_set_dir: Path, tmp_path: Path):
    orders = {}
    for seed in (0, 0, 1):
        out = tmp_path / f"seed{seed}_{len(orders)}"
        manifest = pack(
            caption_set_dir / "imgs", caption_files(caption_set_dir), out, images_per_shard=12, order_seed=seed
        )
        assert (
            manifest["image_order"]["kind"] == "seeded_random_permutation" and manifest["image_order"]["seed"] == seed
        )
        names = []
        for shard in manifest["shards"]:
            with tarfile.open(out / shard["name"]) as tar:
                metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
            assert [m["image_index"] for m in metas] == sorted(m["image_index"] for m in metas)  # indices in order
            names += [m["image"] for m in sorted(metas, key=lambda m: m["image_index"])]
        assert sorted(names) == [f"{i:05d}.jpg" for i in range(48)] and names != sorted(names)
        orders.setdefault(seed, []).append(names)
    assert orders[0][0] == orders[0][1] and orders[0][0] != orders[1][0]
