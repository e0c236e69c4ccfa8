"""The eval CLI on an exported tiny model and on an untrained config: metrics, `stats`, the results JSON,
saved rankings, the HTML page, and its one-line errors."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from data.datasets import load_split
from engine.model import build_model
from engine.runtime.checkpoint import CheckpointError, load_exported_model
from eval.__main__ import main as eval_main
from eval.encode import encode_split
from eval.report import top_k_rankings
from tests.helpers import tiny_model_config


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
    environment = result["environment"]  # what the figures depend on beyond the weights and the data
    assert {"cpu", "platform", "python", "torch", "numpy", "torch_threads"} <= set(environment)
    assert environment["torch_threads"] == torch.get_num_threads() and environment["torch"] == torch.__version__


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


def _eval_args(exported: Path, cuhk_root: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(exported), "--dataset", "cuhk-pedes", "--root", str(cuhk_root), *extra]


def _delete_first_test_image(cuhk_root: Path) -> None:
    entries = json.loads((cuhk_root / "reid_raw.json").read_text())
    (cuhk_root / "imgs" / next(e for e in entries if e["split"] == "test")["file_path"]).unlink()


def test_stats_counts_every_split(cuhk_root: Path, capsys):
    assert eval_main(["stats", "--dataset", "cuhk-pedes", "--root", str(cuhk_root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "CUHK-PEDES"
    assert lines[1].split() == ["split", "ids", "images", "captions"]
    assert [line.split() for line in lines[2:]] == [
        ["train", "8", "16", "32"],
        ["val", "8", "16", "32"],
        ["test", "6", "12", "24"],
    ]


def test_stats_with_missing_images(cuhk_root: Path, capsys):
    _delete_first_test_image(cuhk_root)
    assert eval_main(["stats", "--dataset", "cuhk-pedes", "--root", str(cuhk_root)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: 1 of 12 images of split 'test'") and "\n" not in error
    assert eval_main(["stats", "--dataset", "cuhk-pedes", "--root", str(cuhk_root), "--skip-missing"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["split", "ids", "images", "captions", "missing"]
    assert lines[-1].split() == ["test", "6", "11", "22", "1"]
    assert lines[2].split()[-1] == "0"


def test_out_json_names_the_model_data_and_timings(exported: Path, cuhk_root: Path, tmp_path: Path):
    _delete_first_test_image(cuhk_root)
    out = tmp_path / "result.json"
    assert eval_main(_eval_args(exported, cuhk_root, "--out", str(out))) == 2  # missing image, no --skip-missing
    assert eval_main(_eval_args(exported, cuhk_root, "--out", str(out), "--skip-missing")) == 0
    result = json.loads(out.read_text())
    assert result["checkpoint"] == str(exported)
    assert result["model_sha256"] == hashlib.sha256((exported / "model.safetensors").read_bytes()).hexdigest()
    assert result["model_config"] == json.loads((exported / "model_config.json").read_text())
    assert result["stats"] == {"ids": 6, "images": 11, "captions": 22, "missing_images": 1}
    assert set(result["timings"]) == {"encode_seconds", "metric_seconds"}
    assert all(seconds >= 0 for seconds in result["timings"].values())


def test_out_json_of_an_untrained_config(cuhk_root: Path, tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {image_size: [64, 32], vision_width: 64, vision_layers: 2, vision_heads: 2, text_width: 64, text_layers: 2, text_heads: 2, embed_dim: 32, context_length: 48}\nnam: {tap_layer: 1}\n"
    )
    out = tmp_path / "result.json"
    assert (
        eval_main(["--config", str(config), "--dataset", "cuhk-pedes", "--root", str(cuhk_root), "--out", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert result["model"] == f"untrained model of {config}"
    assert result["checkpoint"] is None and result["model_sha256"] is None
    assert result["model_config"]["tap_layer"] == 1 and result["model_config"]["model"]["embed_dim"] == 32


def test_saved_rankings_follow_the_similarity(exported: Path, cuhk_root: Path, tmp_path: Path):
    out, rankings_file = tmp_path / "result.json", tmp_path / "rankings.json"
    args = _eval_args(exported, cuhk_root, "--out", str(out), "--save-rankings", str(rankings_file), "--top-k", "5")
    assert eval_main(args) == 0
    saved = json.loads(rankings_file.read_text())
    split = load_split("cuhk-pedes", cuhk_root, "test")
    assert saved["top_k"] == 5 and saved["query_captions"] == split.captions
    assert saved["query_pids"] == split.caption_pids and saved["gallery_pids"] == split.image_pids
    assert saved["gallery_paths"] == [str(p) for p in split.image_paths]
    model, _ = load_exported_model(exported)
    image_feats, text_feats = encode_split(model, split)
    similarity = text_feats @ image_feats.t()  # (24, 12)
    rankings = torch.tensor(saved["rankings"])  # (24, 5)
    assert rankings.shape == (24, 5)
    torch.testing.assert_close(similarity.gather(1, rankings), torch.tensor(saved["scores"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        similarity.gather(1, rankings[:, :1])[:, 0], similarity.max(dim=1).values, atol=1e-5, rtol=0
    )
    assert (similarity.gather(1, rankings).diff(dim=1) <= 1e-6).all()  # best first
    gallery_pids, query_pids = torch.tensor(saved["gallery_pids"]), torch.tensor(saved["query_pids"])
    top1_hits = (gallery_pids[rankings[:, 0]] == query_pids).double().mean().item() * 100
    top5_hits = (gallery_pids[rankings] == query_pids[:, None]).any(dim=1).double().mean().item() * 100
    metrics = json.loads(out.read_text())["metrics"]
    assert (top1_hits, top5_hits) == pytest.approx((metrics["R1"], metrics["R5"]))


def test_top_k_keeps_gallery_order_on_ties_across_chunks():
    similarity = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1], [0.2, 0.2, 0.2, 0.2, 0.3], [1.0, 0.0, 0.0, 0.0, 0.0]])
    indices, scores = top_k_rankings(similarity, 3, chunk_size=2)
    assert indices.tolist() == [[1, 3, 0], [4, 0, 1], [0, 1, 2]]
    torch.testing.assert_close(scores, similarity.gather(1, indices))
    assert top_k_rankings(similarity, 50)[0].shape == (3, 5)  # k is capped at the gallery size


def test_html_cli_writes_the_page(exported: Path, cuhk_root: Path, tmp_path: Path):
    args = _eval_args(exported, cuhk_root, "--html", str(tmp_path / "page"), "--html-queries", "3")
    assert eval_main(args) == 0
    page = (tmp_path / "page" / "index.html").read_text()
    assert page.count("<img ") == 30 and page.count('class="query"') == 3


@pytest.mark.parametrize("extra", [["--top-k", "0"], ["--html-queries", "0"]])
def test_bad_counts_are_one_line_errors(extra, exported: Path, cuhk_root: Path, capsys):
    assert eval_main(_eval_args(exported, cuhk_root, *extra)) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --top-k and --html-queries must be >= 1") and "\n" not in error
