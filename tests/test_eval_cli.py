"""The eval CLI on an exported tiny model and on an untrained config, and its one-line errors."""

import json
from pathlib import Path

import pytest
import torch

from engine.checkpoint import CheckpointError, export_model, load_exported_model
from engine.model import build_model
from eval.__main__ import main as eval_main
from tests.conftest import tiny_model_config


@pytest.fixture
def cuhk_root(tmp_path: Path) -> Path:
    from data.synthetic import generate

    generate(
        tmp_path / "synthetic", seed=1, train_images=4, test_identities=6, images_per_test_identity=2, progress=False
    )
    return tmp_path / "synthetic" / "cuhk_pedes"


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(image_size=(64, 32), context_length=48), tap_layer=1)
    export_model(model, tmp_path / "export", model.cfg, tap_layer=1)
    return tmp_path / "export"


def test_exported_model_round_trips(exported: Path):
    model, _ = load_exported_model(exported)
    torch.manual_seed(0)
    original = build_model(tiny_model_config(image_size=(64, 32), context_length=48), tap_layer=1)
    for (name, a), (_, b) in zip(model.state_dict().items(), original.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert model.tap_layer == 1


def test_eval_prints_the_table_and_writes_json(exported: Path, cuhk_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "result.json"
    assert (
        eval_main(
            ["--checkpoint", str(exported), "--dataset", "cuhk-pedes", "--root", str(cuhk_root), "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "CUHK-PEDES test: 6 ids, 12 images, 24 captions" in printed
    assert printed.splitlines()[-2].split() == ["R1", "R5", "R10", "mAP", "mINP"]
    result = json.loads(out.read_text())
    assert result["metrics"]["num_queries"] == 24
    values = [float(v) for v in printed.splitlines()[-1].split()]
    assert values == pytest.approx([result["metrics"][k] for k in ("R1", "R5", "R10", "mAP", "mINP")], abs=0.006)


def test_eval_of_an_untrained_config(cuhk_root: Path, tmp_path: Path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {image_size: [64, 32], vision_width: 64, vision_layers: 2, vision_heads: 2, text_width: 64, text_layers: 2, text_heads: 2, embed_dim: 32, context_length: 48}\nnam: {tap_layer: 1}\n"
    )
    assert eval_main(["--config", str(config), "--dataset", "cuhk-pedes", "--root", str(cuhk_root)]) == 0
    assert "untrained model of" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "NOWHERE"], "no checkpoint at NOWHERE"),
        (["--config", "missing.yaml"], "config file not found: missing.yaml"),
    ],
)
def test_bad_inputs_are_one_line_errors(args, message, cuhk_root: Path, capsys):
    assert eval_main([*args, "--dataset", "cuhk-pedes", "--root", str(cuhk_root)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_missing_benchmark_root_is_named(exported: Path, tmp_path: Path, capsys):
    assert eval_main(["--checkpoint", str(exported), "--dataset", "cuhk-pedes", "--root", str(tmp_path / "none")]) == 2
    assert "reid_raw.json" in capsys.readouterr().err


def test_corrupt_export_is_named(exported: Path):
    (exported / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot load the model in"):
        load_exported_model(exported)
