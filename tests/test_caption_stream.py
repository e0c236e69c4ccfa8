from collections import Counter
from pathlib import Path

import pytest
import torch

from data.caption_stream import PROBLEMS, CaptionSampleStream, make_loader
from data.manifest import Manifest, ShardError
from data.position import DataPosition
from tests.helpers import stream


def batches(data: CaptionSampleStream, *, workers: int) -> list[dict]:
    return [item for item in make_loader(data, num_workers=workers) if not item.get("tail")]


def caption_ids_seen(data: CaptionSampleStream, *, workers: int) -> list[int]:
    return [int(i) for b in batches(data, workers=workers) for i in b["caption_id"]]


@pytest.fixture(params=["wds", "mds"])
def shards_of_each_format(request, caption_set_dir: Path, tmp_path: Path) -> Path:
    from data.pack import pack
    from tests.helpers import caption_files

    out = tmp_path / f"shards_{request.param}"
    pack(caption_set_dir / "imgs", caption_files(caption_set_dir), out, images_per_shard=12, fmt=request.param)
    return out


def test_batches_are_images_tokens_pids_and_caption_ids(shards_of_each_format: Path):
    first = batches(stream(shards_of_each_format), workers=0)[0]
    assert first["image"].shape == (5, 3, 32, 16) and first["image"].dtype == torch.float32
    assert first["ids"].shape == (5, 16) and (first["ids"][:, 0] == 49406).all()
    assert torch.equal(first["caption_id"] // 4, first["pid"])


@pytest.mark.slow
def test_both_formats_give_the_same_samples(caption_set_dir: Path, tmp_path: Path):
    from data.pack import pack
    from tests.helpers import caption_files

    seen = {}
    for fmt in ("wds", "mds"):
        pack(caption_set_dir / "imgs", caption_files(caption_set_dir), tmp_path / fmt, images_per_shard=12, fmt=fmt)
        seen[fmt] = batches(stream(tmp_path / fmt, workers=2), workers=2)
    assert len(seen["wds"]) == len(seen["mds"]) == 38
    for a, b in zip(seen["wds"], seen["mds"], strict=True):
        assert torch.equal(a["caption_id"], b["caption_id"]) and torch.equal(a["ids"], b["ids"])
        assert torch.equal(a["image"], b["image"])  # same bytes, same per-sample augmentation


@pytest.mark.slow
def test_mds_streams_from_a_remote_into_an_empty_local_cache(caption_set_dir: Path, tmp_path: Path):
    from data.pack import pack
    from tests.helpers import caption_files

    pack(caption_set_dir / "imgs", caption_files(caption_set_dir), tmp_path / "remote", images_per_shard=12, fmt="mds")
    cache = tmp_path / "cache"
    remote_ids = caption_ids_seen(stream(cache, remote=str(tmp_path / "remote"), workers=2), workers=2)
    assert sorted(remote_ids) == sorted(caption_ids_seen(stream(tmp_path / "remote", workers=2), workers=2))
    assert (cache / "manifest.json").is_file() and (cache / "index.json").is_file()
    assert len(list(cache.glob("shard-*/shard.*.mds"))) == 4  # fetched by the readers as they went


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_per_epoch_is_exact(packed_shards: Path, workers: int):
    data = stream(packed_shards, workers=workers)
    assert len(caption_ids_seen(data, workers=workers)) == data.batches_per_epoch(0) * 5


@pytest.mark.slow
def test_two_ranks_by_two_workers_see_every_caption_exactly_once(shards_of_each_format: Path):
    for epoch in range(3):
        seen = Counter()
        for rank in (0, 1):
            data = stream(shards_of_each_format, rank=rank, world=2, workers=2, epoch=epoch, batch=1)
            ids = caption_ids_seen(data, workers=2)
            assert set(ids) == set(data.caption_ids(epoch).tolist())  # what the noise table fetches for it
            seen.update(ids)
        assert seen == Counter(range(192))


def test_one_caption_per_image_draws_one_caption_of_each_image_per_epoch(packed_shards: Path):
    draws = []
    for epoch in range(3):
        ids = caption_ids_seen(stream(packed_shards, epoch=epoch, batch=1, sampling="one_caption_per_image"), workers=0)
        assert sorted(i // 4 for i in ids) == list(range(48))
        draws.append(ids)
    assert len({frozenset(d) for d in draws}) == 3  # another caption of the image in another epoch


@pytest.mark.slow
def test_ranks_split_the_captions_and_the_split_changes_between_epochs(packed_shards: Path):
    assignments = [
        frozenset(caption_ids_seen(stream(packed_shards, rank=0, world=2, epoch=epoch, batch=1), workers=0))
        for epoch in range(4)
    ]
    assert len(set(assignments)) > 1  # captions meet other ranks: the noise table must follow them


@pytest.mark.slow
def test_order_is_deterministic_per_epoch_and_differs_between_epochs(packed_shards: Path):
    first = caption_ids_seen(stream(packed_shards, epoch=3), workers=2)
    assert first == caption_ids_seen(stream(packed_shards, epoch=3), workers=2)
    assert first != caption_ids_seen(stream(packed_shards, epoch=4), workers=2)


def resumed_after(shards: Path, consumed: int, *, workers: int, batch: int = 5) -> tuple[list[dict], list[dict]]:
    """The uninterrupted epoch's items after `consumed` batches, and what a stream resumed there yields."""
    full = list(make_loader(stream(shards, workers=workers, batch=batch), num_workers=workers))
    position = DataPosition(max(1, workers), 192, len(PROBLEMS))
    taken, at = 0, 0
    while taken < consumed:
        taken += position.consume(full[at])
        at += 1
    rest = full[at:]
    saved = position.state_dict()
    restored = DataPosition(max(1, workers), 192, len(PROBLEMS))
    restored.load_state_dict(saved)
    data = stream(shards, workers=workers, batch=batch)
    data.set_epoch(0, restored.start())
    return rest, list(make_loader(data, num_workers=workers))


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "consumed"), [(0, 7), (2, 1), (2, 8), (3, 13), (2, 37)])
def test_resumed_stream_continues_exactly_where_the_checkpoint_was(
    shards_of_each_format: Path, workers: int, consumed: int
):
    rest, resumed = resumed_after(shards_of_each_format, consumed, workers=workers)
    assert len(resumed) == len(rest) > 0
    for expected, got in zip(rest, resumed, strict=True):
        assert expected.keys() == got.keys()
        for key, value in expected.items():
            assert torch.equal(value, got[key]) if isinstance(value, torch.Tensor) else value == got[key], key


def test_resume_onto_another_layout_runs_only_the_rest_of_the_epoch(packed_shards: Path):
    position = DataPosition(2, 192, len(PROBLEMS))
    trained = []
    for item in make_loader(stream(packed_shards, workers=2), num_workers=2):
        if position.consume(item):
            trained += item["caption_id"].tolist()
        if len(trained) >= 60:
            break
    new = DataPosition(3, 192, len(PROBLEMS))
    new.load_other_layout([position.state_dict()])
    data = stream(packed_shards, workers=3, batch=1)
    data.set_epoch(0, new.start())
    rest = caption_ids_seen(data, workers=3)
    assert sorted(trained + rest) == list(range(192))


def test_a_manifest_without_any_shard_is_named(packed_shards: Path, tmp_path: Path):
    with pytest.raises(ShardError, match="no manifest.json in shard folder"):
        Manifest.load(tmp_path)
    for shard in packed_shards.glob("shard-*.tar"):
        shard.unlink()
    with pytest.raises(ShardError, match="all 4 shards .* are missing"):
        Manifest.load(packed_shards)


def test_more_ranks_than_shards_is_refused(packed_shards: Path):
    with pytest.raises(ShardError, match="4 shards for 5 ranks"):
        stream(packed_shards, world=5)


def test_preflight_names_the_rank_that_gets_no_full_batch(tmp_path: Path):
    """26 images in shards of 12, 12 and 2 over 3 ranks: about 9 images per rank on average, yet the rank holding
    the 2-image shard has no batch of 5; the error names that rank and its share, not the average."""
    from data.pack import pack
    from engine.config import load_config
    from engine.runtime.preflight import check_data
    from tests.helpers import REPO, caption_files, write_caption_set

    raw = write_caption_set(tmp_path / "raw", images=26)
    pack(raw / "imgs", caption_files(raw), tmp_path / "shards", images_per_shard=12)
    overrides = [f"data.shards={tmp_path / 'shards'}", "data.num_workers=0", "train.epochs=1"]
    overrides.append("data.sampling=one_caption_per_image")
    config = load_config(REPO / "configs" / "demo_cpu.yaml", [*overrides, "train.batch_size=5"])
    data = stream(tmp_path / "shards", world=3, batch=5, sampling="one_caption_per_image")
    small = min(range(3), key=lambda rank: data.units_per_worker(0)[rank])
    assert data.units_per_worker(0)[small] == [2] and data.batches_per_epoch(0) == 0
    with pytest.raises(ShardError) as error:
        check_data(config, world=3)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"rank {small} of 3 gets no full batch in epoch 0: 2 images from 1 of the 3 shards")
    assert "train.batch_size=5" in message
    check_data(load_config(REPO / "configs" / "demo_cpu.yaml", [*overrides, "train.batch_size=2"]), world=3)
