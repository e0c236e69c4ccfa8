"""Oracle noise marks exactly the recorded wrong word's tokens of the packed caption it belongs to."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from data.caption_stream import CaptionSampleStream
from data.manifest import Manifest
from data.order import image_permutation
from data.pack import pack
from data.synthetic import CAPTION_FILES, generate
from data.tokenizer import CaptionTokenizer
from engine.config import AugmentConfig
from engine.method.nam import valid_token_mask
from engine.method.nam_oracle import OracleNoise


def test_oracle_marks_the_wrong_word(tmp_path: Path) -> None:
    generate(tmp_path, seed=0, train_images=24, test_identities=2, images_per_test_identity=1, noise_fraction=0.5,
             split_identities=1, progress=False)  # fmt: skip
    raw = tmp_path / "luperson_mllm"
    pack(raw / "imgs", [raw / name for name in CAPTION_FILES], tmp_path / "shards", images_per_shard=12)
    manifest = Manifest.load(tmp_path / "shards")
    oracle = OracleNoise.load(raw / "noise_words.jsonl", manifest, 77)
    records = [json.loads(line) for line in (raw / "noise_words.jsonl").read_text().splitlines()]
    assert 10 < len(oracle.spans) <= len(records)
    tokenizer = CaptionTokenizer(77)
    stream = CaptionSampleStream(manifest, rank=0, world_size=1, num_workers=0, batch_size=4, image_size=(64, 32),
                                 augment=AugmentConfig(), context_length=77, seed=0, shuffle_buffer=1)  # fmt: skip
    seed = json.loads((tmp_path / "shards" / "manifest.json").read_text())["image_order"]["seed"]
    names = sorted(p.name for p in (raw / "imgs").iterdir())
    packed_names = [names[i] for i in image_permutation(len(names), seed)]  # image index -> file name, worked out here
    checked = 0
    for batch in stream:
        if batch.get("tail"):
            break
        noise = oracle.noise(batch["caption_id"], valid_token_mask(batch["ids"]))
        for row, caption_id in enumerate(batch["caption_id"].tolist()):
            marked = batch["ids"][row][noise[row] > 0].tolist()
            if caption_id in oracle.spans:
                image, source = divmod(caption_id, len(manifest.sources))
                name = packed_names[image]
                record = next(
                    r for r in records if r["image"] == name and Path(r["file"]).stem == manifest.sources[source]
                )
                assert marked == tokenizer.encode(record["wrong"]), (record, marked)
                checked += 1
            else:
                assert marked == []
    assert checked > 5


def test_epoch_2_masking_readout_sees_oracle_scores(tmp_path: Path) -> None:
    """The ablation's masking readout, fed a noise table holding the oracle's scores: every wrong word gets
    r' near 1 and correct words less than p (Eq. 4 centres each caption on p)."""
    from safetensors.torch import save_file

    from engine.method.noise_table import UNSCORED, quantise
    from launcher.ablation import masking_in_epoch_2

    generate(tmp_path, seed=0, train_images=24, test_identities=2, images_per_test_identity=1, noise_fraction=0.5,
             split_identities=1, progress=False)  # fmt: skip
    raw = tmp_path / "luperson_mllm"
    pack(raw / "imgs", [raw / name for name in CAPTION_FILES], tmp_path / "shards", images_per_shard=12)
    manifest = Manifest.load(tmp_path / "shards")
    oracle = OracleNoise.load(raw / "noise_words.jsonl", manifest, 48)
    stream = CaptionSampleStream(manifest, rank=0, world_size=1, num_workers=0, batch_size=4, image_size=(64, 32),
                                 augment=AugmentConfig(), context_length=48, seed=0, shuffle_buffer=1)  # fmt: skip
    owned = torch.full((manifest.caption_id_space, 48), UNSCORED, dtype=torch.uint8)
    for batch in stream:
        if batch.get("tail"):
            break
        valid = valid_token_mask(batch["ids"])
        owned[batch["caption_id"]] = quantise(oracle.noise(batch["caption_id"], valid)).masked_fill(~valid, UNSCORED)
    tag = tmp_path / "run" / "checkpoints" / "epoch0001"
    tag.mkdir(parents=True)
    save_file({"noise_table.owned": owned}, str(tag / "rank00000_state.safetensors"))
    result = masking_in_epoch_2(tmp_path / "run", raw, tmp_path / "shards", 0.15, 1000)
    assert result["wrong"]["words"] > 10 and result["correct"]["words"] > 100
    assert result["wrong"]["mean"] > 0.95
    assert result["correct"]["mean"] < 0.15
