from pathlib import Path

import pytest
import torch

from data.dataset import CaptionSampleStream, make_loader
from data.manifest import Manifest, ShardError
from engine.config import AugmentConfig


def stream(shards: Path, *, rank: int = 0, world: int = 1, workers: int = 0, epoch: int = 0) -> CaptionSampleStream:
    result = CaptionSampleStream(
        Manifest.load(shards),
        rank=rank,
        world_size=world,
        num_workers=workers,
        image_size=(32, 16),
        augment=AugmentConfig(),
        context_length=16,
        seed=0,
        shuffle_buffer=64,
    )
    result.set_epoch(epoch)
    return result


def caption_ids_seen(data: CaptionSampleStream, *, workers: int, batch: int = 5) -> list[int]:
    return [int(i) for b in make_loader(data, batch_size=batch, num_workers=workers) for i in b["caption_id"]]


def test_samples_are_images_tokens_pids_and_caption_ids(packed_shards: Path):
    sample = next(iter(stream(packed_shards)))
    assert sample["image"].shape == (3, 32, 16) and sample["image"].dtype == torch.float32
    assert sample["ids"].shape == (16,) and sample["ids"][0] == 49406
    assert sample["caption_id"] // 4 == sample["pid"]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_per_epoch_is_exact(packed_shards: Path, workers: int):
    data = stream(packed_shards, workers=workers)
    assert len(caption_ids_seen(data, workers=workers)) == data.batches_per_epoch(5, epoch=0) * 5


def test_ranks_split_the_captions_and_the_split_changes_between_epochs(packed_shards: Path):
    assignments = []
    for epoch in range(4):
        streams = [stream(packed_shards, rank=r, world=2, epoch=epoch) for r in (0, 1)]
        seen = [set(caption_ids_seen(s, workers=0, batch=1)) for s in streams]
        assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(192))
        assert [set(s.caption_ids(epoch).tolist()) for s in streams] == seen  # what the noise table fetches
        assignments.append(seen[0])
    assert len({frozenset(a) for a in assignments}) > 1  # captions meet other ranks: the table must follow them


def test_order_is_deterministic_per_epoch_and_differs_between_epochs(packed_shards: Path):
    first = caption_ids_seen(stream(packed_shards, epoch=3), workers=2)
    assert first == caption_ids_seen(stream(packed_shards, epoch=3), workers=2)
    assert first != caption_ids_seen(stream(packed_shards, epoch=4), workers=2)
    images = [b["image"] for b in make_loader(stream(packed_shards, epoch=3), batch_size=8, num_workers=0)]
    again = [b["image"] for b in make_loader(stream(packed_shards, epoch=3), batch_size=8, num_workers=0)]
    assert all(torch.equal(a, b) for a, b in zip(images, again, strict=True))  # augmentations replay too


def test_undecodable_image_is_skipped_not_fatal(tmp_path: Path):
    from data.pack import pack
    from tests.conftest import caption_files, write_caption_set

    root = write_caption_set(tmp_path / "raw", images=8)
    (root / "imgs" / "00002.jpg").write_bytes(b"not a jpeg")
    pack(root / "imgs", caption_files(root), tmp_path / "shards", images_per_shard=8)
    ids = caption_ids_seen(stream(tmp_path / "shards"), workers=0, batch=1)
    assert len(ids) == 28 and not {8, 9, 10, 11} & set(ids)


def test_missing_manifest_or_shard_is_named(packed_shards: Path, tmp_path: Path):
    with pytest.raises(ShardError, match="no manifest.json in shard folder"):
        Manifest.load(tmp_path)
    (packed_shards / "shard-000002.tar").unlink()
    with pytest.raises(ShardError, match="shard-000002.tar"):
        Manifest.load(packed_shards)


def test_more_ranks_than_shards_is_refused(packed_shards: Path):
    with pytest.raises(ShardError, match="4 shards for 5 ranks"):
        stream(packed_shards, world=5)
