"""The authors' training checkpoints (MLLM4Text-ReID / IRRA `Checkpointer.save`) load wherever a model is read:
files in exactly their layouts (nn.DataParallel prefix or not, fp16 or fp32 weights, with or without IRRA's heads)
are built from this project's tiny models, and give the features of the same weights read as an OpenAI state dict.
A pickle holding anything but tensors and plain containers is refused in one line, without running it."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from data.manifest import Manifest
from data.outputs import sha256_of
from data.tokenizer import CaptionTokenizer
from engine.config import load_config
from engine.model import CLIPDualEncoder, build_model
from engine.model.irra_checkpoint import ours_to_irra_head_name
from engine.model.training_model import DualEncoderWithHeads, build_training_model, dual_encoder
from engine.model.weights import WeightsError, load_pretrained
from engine.runtime.checkpoint import CheckpointError, load_exported_model
from eval.__main__ import main as eval_main
from eval.openai_format import main as openai_format_main
from eval.openai_format import openai_state_dict
from eval.search.gallery_index import ModelIdentity
from eval.search.gallery_search import load_text_tower
from tests.helpers import assert_refused, run, tiny_model_config

# One head per 64 channels and a (3w, w) patch grid, as OpenAI's build_model and the authors' 384x128 imply, so the
# config derived from the shapes is this one.
CONFIG = tiny_model_config(
    image_size=(48, 16), vision_width=64, vision_heads=1, text_width=64, text_heads=1, embed_dim=32
)
MODEL_YAML = (
    "{image_size: [48, 16], vision_width: 64, vision_layers: 2, vision_heads: 1, text_width: 64, text_layers: 2,"
    " text_heads: 1, embed_dim: 32, context_length: 16}"
)
IDENTITIES, MLM_DEPTH = 5, 1


def trained_heads_model(seed: int = 0) -> DualEncoderWithHeads:
    torch.manual_seed(seed)
    return DualEncoderWithHeads(CLIPDualEncoder(CONFIG, tap_layer=1), num_identities=IDENTITIES, mlm_depth=MLM_DEPTH)


def convert_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI's convert_weights as the authors apply it: Linear, Conv, attention and projection weights to fp16;
    LayerNorms, embeddings and the class and position tables stay fp32."""
    stays = ("ln_", "token_embedding", "positional_embedding", "class_embedding", "logit_scale", ".ln.")
    return {k: v if any(s in k for s in stays) else v.half() for k, v in state.items()}


def authors_file(
    path: Path, model: DualEncoderWithHeads, *, data_parallel: bool, fp16: bool, heads: bool
) -> dict[str, torch.Tensor]:
    """Writes `model` as their Checkpointer.save does; returns its CLIP part in OpenAI's names (as written)."""
    clip = openai_state_dict(model.encoder)
    state = {f"base_model.{k}": v for k, v in clip.items()}
    if heads:
        for name, value in model.state_dict().items():
            if not name.startswith("encoder."):
                state[ours_to_irra_head_name(name)] = value.clone()
    if fp16:
        state = convert_weights(state)
    if data_parallel:
        state = {f"module.{k}": v for k, v in state.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, eps=1e-3)
    scheduler = {"last_epoch": 3, "base_lrs": [1e-5], "warmup_method": "linear", "mode": "cosine"}
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "scheduler": scheduler, "epoch": 3}, path)
    return convert_weights(clip) if fp16 else clip


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    return torch.randn(2, 3, 48, 16), CaptionTokenizer(16)(["a man in a black jacket", "a woman with a red bag"])


def features(model: CLIPDualEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    images, ids = inputs()
    with torch.no_grad():
        return model.eval().encode_image(images), model.encode_text(ids)


@pytest.mark.parametrize("data_parallel", [False, True], ids=["plain", "dataparallel"])
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("heads", [False, True], ids=["bare", "heads"])
def test_authors_checkpoint_gives_the_features_of_the_openai_path(
    tmp_path: Path, capsys: pytest.CaptureFixture, data_parallel: bool, fp16: bool, heads: bool
) -> None:
    source = trained_heads_model()
    pth, openai = tmp_path / "best.pth", tmp_path / "openai.pt"
    torch.save(authors_file(pth, source, data_parallel=data_parallel, fp16=fp16, heads=heads), openai)
    expected = features(build_model(dataclasses.replace(CONFIG, pretrained=str(openai)), tap_layer=1))
    capsys.readouterr()

    as_pretrained = build_model(dataclasses.replace(CONFIG, pretrained=str(pth)), tap_layer=1)
    line = capsys.readouterr().out.strip()
    derived, where = load_exported_model(pth)  # eval's --checkpoint FILE: the config from the shapes
    for actual in (features(as_pretrained), features(derived)):
        for got, want in zip(actual, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert where == pth and derived.cfg == CONFIG and as_pretrained.text_projection.weight.dtype == torch.float32
    assert len(line.splitlines()) == 1 and "IRRA / MLLM4Text-ReID training checkpoint" in line
    assert ("nn.DataParallel prefix" in line) == data_parallel and ("fp16 x" in line) == fp16
    assert "ignored optimizer, scheduler, epoch" in line and "resampled nothing" in line
    assert ("head tensors not used here" in line) == heads


def test_a_model_at_another_size_resamples_the_authors_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    authors_file(tmp_path / "best.pth", trained_heads_model(), data_parallel=True, fp16=True, heads=False)
    larger = dataclasses.replace(CONFIG, image_size=(96, 32), pretrained=str(tmp_path / "best.pth"))
    build_model(larger, tap_layer=1)
    assert "resampled vision positions 3x1 -> 6x2 (bilinear)" in capsys.readouterr().out


def finetune_config(pretrained: Path, *overrides: str):
    return load_config(
        None,
        [f"model={MODEL_YAML}", f"model.pretrained={pretrained}", "nam.tap_layer=1", "nam.masking=none"]
        + ["loss.id_weight=1", "loss.mlm_weight=1", f"loss.mlm_depth={MLM_DEPTH}", *overrides],
    )


def test_a_finetune_starts_from_the_checkpoints_heads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = trained_heads_model(seed=5)
    authors_file(tmp_path / "best.pth", source, data_parallel=True, fp16=False, heads=True)
    torch.manual_seed(0)  # a different draw for the fresh heads than the source's
    model = build_training_model(
        finetune_config(tmp_path / "best.pth"), Manifest(tmp_path, ["c"], 4, 4, [], num_identities=IDENTITIES)
    )
    for name, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert "and heads: id_classifier, mlm;" in capsys.readouterr().out


def test_heads_of_another_shape_stay_fresh_and_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = trained_heads_model(seed=5)
    authors_file(tmp_path / "best.pth", source, data_parallel=False, fp16=True, heads=True)
    other_identities = Manifest(tmp_path, ["c"], 4, 4, [], num_identities=IDENTITIES + 2)
    model = build_training_model(finetune_config(tmp_path / "best.pth"), other_identities)
    torch.testing.assert_close(model.mlm.head.fc.weight, source.mlm.head.fc.weight.half().float())
    assert model.id_classifier.classifier.weight.shape[0] == IDENTITIES + 2
    line = capsys.readouterr().out
    assert "heads: none of id_classifier (the file's differs at id_classifier.classifier.weight" in line
    assert ", mlm;" in line
    torch.testing.assert_close(
        dual_encoder(model).text_projection.weight, source.encoder.text_projection.weight.half().float()
    )


class RunsACommand:
    """What a malicious pickle holds: unpickling it would call os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_with_code_is_refused_in_one_line_and_never_runs(tmp_path: Path) -> None:
    marker, pth = tmp_path / "ran", tmp_path / "best.pth"
    state = {"base_model.visual.conv1.weight": torch.zeros(1)}
    torch.save({"model": state, "scheduler": RunsACommand(marker)}, pth)
    with pytest.raises(WeightsError, match=r"best\.pth was refused: it holds pickled objects") as refused:
        load_pretrained(CLIPDualEncoder(CONFIG, tap_layer=1), str(pth))
    assert "\n" not in str(refused.value)
    with pytest.raises(CheckpointError, match=r"best\.pth was refused"):
        load_exported_model(pth)
    line = assert_refused(run(eval_main, ["export", "--checkpoint", pth, "--out", tmp_path / "hf"]), pth)
    assert "refused" in line
    assert_refused(run(openai_format_main, ["--model", pth, "--out", tmp_path / "clip.pt"]), pth)
    assert not marker.exists()


def test_openai_format_cli_converts_an_authors_checkpoint(tmp_path: Path) -> None:
    source = trained_heads_model()
    written = authors_file(tmp_path / "best.pth", source, data_parallel=True, fp16=False, heads=True)
    code, text = run(openai_format_main, ["--model", tmp_path / "best.pth", "--out", tmp_path / "clip.pt"])
    assert code == 0, text
    converted = torch.load(tmp_path / "clip.pt", weights_only=True)
    assert converted.keys() == written.keys()
    for key, value in written.items():
        torch.testing.assert_close(converted[key], value, rtol=0, atol=0, msg=key)


def test_gallery_tools_take_an_authors_checkpoint(tmp_path: Path) -> None:
    pth = tmp_path / "best.pth"
    authors_file(pth, trained_heads_model(), data_parallel=True, fp16=True, heads=True)
    identity = ModelIdentity.of(pth)
    model, _ = load_exported_model(pth)
    assert identity.sha256 == sha256_of(pth) and identity.model_config["model"]["image_size"] == [48, 16]
    tower = load_text_tower(Path(identity.checkpoint), identity.model_config)
    _, ids = inputs()
    with torch.no_grad():
        torch.testing.assert_close(tower.encode_text(ids), model.encode_text(ids), rtol=0, atol=0)
