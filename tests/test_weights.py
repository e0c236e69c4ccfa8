"""Loading real CLIP checkpoints from local files: transformers directories, OpenAI state dicts and TorchScript
archives give the same features as the library that wrote them; bad paths and architectures fail in one line."""

import dataclasses
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from transformers import CLIPConfig, CLIPModel

from engine.config import ConfigError
from engine.model import CLIPDualEncoder, build_model
from engine.model.weights import (
    TEXT_POSITIONS,
    VISION_POSITIONS,
    WeightsError,
    load_pretrained,
    resample_position_table,
)
from tests.helpers import projected, tiny_model_config

CONTEXT = 16
# 2x2 grid, the "pretraining" resolution of these tiny checkpoints
SQUARE = tiny_model_config(text_heads=4, context_length=CONTEXT)
RECTANGLE = dataclasses.replace(SQUARE, image_size=(64, 32))  # 4x2 grid, like 384x128 against 224x224
CAPTIONS = ["a man in a black jacket", "a woman with a red bag and white shoes"]


def hf_config(*, width: int = 64, layers: int = 2) -> CLIPConfig:
    common = {"hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": layers}
    common["hidden_act"] = "quick_gelu"
    return CLIPConfig(
        text_config={**common, "vocab_size": 49408, "num_attention_heads": 4, "max_position_embeddings": CONTEXT},
        vision_config={**common, "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        projection_dim=32,
    )


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[CLIPModel, Path]:
    torch.manual_seed(0)
    reference = CLIPModel(hf_config()).eval()
    directory = tmp_path_factory.mktemp("hf_clip")
    reference.save_pretrained(directory)
    return reference, directory


@pytest.fixture(scope="module")
def openai_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[CLIP, Path, Path]:
    torch.manual_seed(1)
    reference = CLIP(
        32,
        vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=32),
        text_cfg=CLIPTextCfg(context_length=CONTEXT, vocab_size=49408, width=64, heads=4, layers=2),
        quick_gelu=True,
    ).eval()
    directory = tmp_path_factory.mktemp("openai_clip")
    state_path, script_path = directory / "state_dict.pt", directory / "ViT-tiny.pt"
    torch.save(reference.state_dict(), state_path)
    torch.jit.save(torch.jit.script(reference), str(script_path))  # a real TorchScript archive, like OpenAI's
    return reference, state_path, script_path


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    return torch.randn(2, 3, 32, 32), open_clip.tokenize(CAPTIONS, context_length=CONTEXT)


def test_hf_directory_matches_transformers(hf_dir: tuple[CLIPModel, Path]) -> None:
    reference, directory = hf_dir
    model = build_model(dataclasses.replace(SQUARE, pretrained=str(directory)), tap_layer=1).eval()
    images, ids = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(images), projected(reference.get_image_features(pixel_values=images))
        )
        torch.testing.assert_close(model.encode_text(ids), projected(reference.get_text_features(input_ids=ids)))
    torch.testing.assert_close(model.logit_scale, reference.logit_scale.detach())


def test_hf_directory_into_rectangle_resamples_positions(hf_dir: tuple[CLIPModel, Path]) -> None:
    reference, directory = hf_dir
    model = CLIPDualEncoder(RECTANGLE, tap_layer=1)
    load_pretrained(model, str(directory))
    source = reference.vision_model.embeddings.position_embedding.weight.detach()  # (1 + 2*2, D)
    loaded = model.vision_model.embeddings.position_embedding.weight.detach()
    assert loaded.shape == (1 + 4 * 2, 64)
    torch.testing.assert_close(loaded[0], source[0])  # CLS row kept
    torch.testing.assert_close(loaded, resample_position_table(source, (2, 2), (4, 2)))
    assert not torch.allclose(loaded[1], loaded[2])  # really resampled, not a broadcast row
    _, ids = inputs()
    with torch.no_grad():  # the text tower is untouched by the image size
        torch.testing.assert_close(model.encode_text(ids), projected(reference.get_text_features(input_ids=ids)))


def test_resample_is_identity_on_same_grid() -> None:
    table = torch.randn(1 + 14 * 14, 8)
    torch.testing.assert_close(resample_position_table(table, (14, 14), (14, 14)), table)
    assert resample_position_table(table, (14, 14), (24, 8)).shape == (1 + 24 * 8, 8)


def test_longer_text_positions_are_cut(hf_dir: tuple[CLIPModel, Path]) -> None:
    reference, directory = hf_dir
    model = CLIPDualEncoder(dataclasses.replace(SQUARE, context_length=8), tap_layer=1)
    load_pretrained(model, str(directory))
    full = reference.text_model.embeddings.position_embedding.weight.detach()
    torch.testing.assert_close(model.text_model.embeddings.position_embedding.weight.detach(), full[:8])


@pytest.mark.parametrize("kind", ["state_dict", "torchscript"])
def test_openai_format_matches_open_clip(openai_files: tuple[CLIP, Path, Path], kind: str) -> None:
    reference, state_path, script_path = openai_files
    model = CLIPDualEncoder(SQUARE, tap_layer=1).eval()
    load_pretrained(model, str(state_path if kind == "state_dict" else script_path))
    images, ids = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(images))
        torch.testing.assert_close(model.encode_text(ids), reference.encode_text(ids))


def test_openai_format_into_rectangle(openai_files: tuple[CLIP, Path, Path], tmp_path: Path) -> None:
    reference, state_path, _ = openai_files
    wrapped = tmp_path / "wrapped.pt"  # a training checkpoint: {"state_dict": ...} with DDP's "module." prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, wrapped)
    model = CLIPDualEncoder(RECTANGLE, tap_layer=1)
    load_pretrained(model, str(wrapped))
    source = reference.visual.positional_embedding.detach()
    loaded = model.state_dict()[VISION_POSITIONS]
    assert loaded.shape == (9, 64)
    torch.testing.assert_close(loaded[0], source[0])
    torch.testing.assert_close(model.state_dict()[TEXT_POSITIONS], reference.positional_embedding.detach())


def one_line_error(path: str | Path, model: CLIPDualEncoder | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_pretrained(model or CLIPDualEncoder(SQUARE, tap_layer=1), str(path))
    message = str(caught.value)
    assert isinstance(caught.value, WeightsError) and isinstance(caught.value, ValueError)
    assert "\n" not in message and str(path) in message, message
    return message


def test_missing_path(tmp_path: Path) -> None:
    assert "not found" in one_line_error(tmp_path / "nope" / "ViT-B-16.pt")


def test_non_clip_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    assert "not a CLIP checkpoint" in one_line_error(garbage)
    resnet = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, resnet)
    assert "not a CLIP checkpoint" in one_line_error(resnet)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert "model.safetensors" in one_line_error(empty_dir)


def test_shape_mismatch_names_key(tmp_path: Path) -> None:
    CLIPModel(hf_config(width=96)).save_pretrained(tmp_path / "wide")  # like a ViT-L checkpoint into ViT-B
    message = one_line_error(tmp_path / "wide")
    assert "vision_model.embeddings.class_embedding" in message and "(64,)" in message and "(96,)" in message


def test_missing_keys_are_named(tmp_path: Path) -> None:
    CLIPModel(hf_config(layers=1)).save_pretrained(tmp_path / "shallow")
    message = one_line_error(tmp_path / "shallow")
    assert "missing" in message and "encoder.layers.1" in message


def test_openai_fp16_weights_load_into_fp32(openai_files: tuple[CLIP, Path, Path], tmp_path: Path) -> None:
    reference, _, _ = openai_files
    half = tmp_path / "half.pt"  # OpenAI ships ViT-B-16.pt in fp16
    torch.save({k: v.half() for k, v in reference.state_dict().items()}, half)
    model = CLIPDualEncoder(SQUARE, tap_layer=1).eval()
    load_pretrained(model, str(half))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    images, ids = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(images), atol=2e-2, rtol=2e-2)
