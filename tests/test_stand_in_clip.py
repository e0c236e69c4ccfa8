"""The synthetic stand-in for web-pretrained CLIP: its token-wise loss, the OpenAI-format export that loads back
through model.pretrained, the web corpus and the three target sets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from data.datasets import load_split
from data.synthetic import Stream, sample_attributes, stream_rng
from data.synthetic.targets import TARGETS, annotator_caption, write_targets
from data.synthetic.web import WEB_FILES, write_web_set
from engine.method.token_alignment import filip_loss, token_wise_similarity
from engine.model import build_model
from eval.openai_format import openai_state_dict, save_openai_format
from tests.helpers import tiny_model_config


def test_token_wise_similarity_matches_loops() -> None:
    torch.manual_seed(0)
    text, patches = torch.randn(3, 5, 8), torch.randn(3, 4, 8)
    valid = torch.tensor([[0, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    t2i, i2t = token_wise_similarity(text, patches, valid)
    tn, pn = torch.nn.functional.normalize(text, dim=-1), torch.nn.functional.normalize(patches, dim=-1)
    for i in range(3):
        for j in range(3):
            cos = tn[i][valid[i]] @ pn[j].t()  # (valid tokens, M)
            assert t2i[i, j] == pytest.approx(float(cos.max(dim=1).values.mean()), abs=1e-6)
            assert i2t[j, i] == pytest.approx(float(cos.max(dim=0).values.mean()), abs=1e-6)


def test_filip_loss_trains_the_tap_layer_only() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(vision_layers=3, text_layers=3), tap_layer=2)
    images = torch.randn(4, 3, 32, 32)
    ids = torch.randint(1, 1000, (4, 16))
    ids[:, 0], ids[:, 8] = 49406, 49407  # SOT, EOT
    loss = filip_loss(model, images, ids, temperature=0.05)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.vision_model.encoder.layers[1].mlp.fc1.weight.grad.abs().sum() > 0
    assert model.vision_model.encoder.layers[2].mlp.fc1.weight.grad is None  # above the tap: untouched
    assert model.text_model.encoder.layers[2].mlp.fc1.weight.grad is None


def test_openai_format_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = tiny_model_config()
    model = build_model(config, tap_layer=1)
    state = openai_state_dict(model)
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in state and "text_projection" in state
    assert state["visual.proj"].shape == (config.vision_width, config.embed_dim)  # OpenAI's (width, E)
    save_openai_format(model, tmp_path / "clip.pt")
    loaded = build_model(dataclasses.replace(config, pretrained=str(tmp_path / "clip.pt")), tap_layer=1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_web_corpus_is_short_clean_and_names_only_vocabulary(tmp_path: Path) -> None:
    summary = write_web_set(tmp_path / "web", seed=0, count=40, size=(64, 32), on_image=lambda: None)
    assert summary["images"] == 40 and 0 < summary["close_ups"] < 40
    captions = [json.loads((tmp_path / "web" / name).read_text()) for name in WEB_FILES]
    assert len(captions[0]) == 40 and sorted(captions[0]) == sorted(captions[1])
    texts = [text for mapping in captions for text in mapping.values()]
    assert max(len(text.split()) for text in texts) <= 24
    assert not any("[" in text or "<" in text for text in texts)


def test_web_people_are_not_pretraining_people() -> None:
    web = {sample_attributes(stream_rng(0, Stream.WEB_PERSON, i)) for i in range(50)}
    pretrain = [sample_attributes(stream_rng(0, Stream.PRETRAIN_PERSON, i)) for i in range(50)]
    assert sum(person in web for person in pretrain) < 5  # independent streams: only chance matches


def test_target_sets_load_and_differ_in_phrasing(tmp_path: Path) -> None:
    write_targets(tmp_path, seed=0, test_identities=6, images_per_identity=2, split_identities=2)
    loaded = {
        name: load_split(name, tmp_path / name.replace("-", "_"), "test") for name in ("cuhk-pedes", "icfg-pedes")
    }
    loaded["rstpreid"] = load_split("rstpreid", tmp_path / "rstpreid", "test")
    for split in loaded.values():
        assert len(set(split.image_pids)) == 6 and len(split.image_paths) == 12
    attrs = sample_attributes(stream_rng(0, Stream.TARGET_PERSON, 0, 0))
    styles = {
        name: {annotator_caption(attrs, t.annotator, stream_rng(1, Stream.TARGET_CAPTION, i)) for i in range(8)}
        for name, t in TARGETS.items()
    }
    assert not styles["cuhk_pedes"] & styles["icfg_pedes"] and not styles["icfg_pedes"] & styles["rstpreid"]
    with pytest.raises(Exception, match="is not empty"):
        write_targets(tmp_path, seed=0, test_identities=6)
