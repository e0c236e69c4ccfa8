"""A battery of mistyped inputs across every command-line tool. Each case asserts the exit status, that no
traceback was printed, and that the last line names the bad input; where a case could damage data, the files that
must survive are hashed before and after. Most tools run in this process through their `main(argv)`; the cases that
need real training processes (a rank that trains, several ranks) are marked slow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.captioning.cli import main as caption_main
from data.captioning.stats import main as caption_stats_main
from data.cli_errors import error_boundary
from data.pack import main as pack_main
from data.pack_dataset import main as pack_dataset_main
from data.synthetic.cli import main as synthetic_main
from eval.__main__ import main as eval_main
from eval.analysis.noise_auroc import main as noise_auroc_main
from eval.plot import main as plot_main
from launcher.train import main as train_main
from tests.helpers import (
    REPO,
    assert_refused,
    build_cli_inputs,
    caption_files,
    digest,
    last_line,
    run,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return build_cli_inputs(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(autouse=True)
def no_exit_sweep(monkeypatch):
    """launcher.train ends with a full garbage collection that stops left-over data workers (0.6 s a call here);
    the cases in this process fail before any worker exists."""
    monkeypatch.setattr("launcher.train.end_data_workers", lambda: None)


@pytest.fixture
def run_copy(world, tmp_path) -> Path:
    shutil.copytree(world["run"], tmp_path / "run")
    return tmp_path / "run"


def train(world, *extra: object) -> tuple[int, str]:
    return run(train_main, ["--config", world["config"], *extra])


# ---------------------------------------------------------------- launcher.train: configs and overrides


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["train.epochs=[1"], "train.epochs=[1"),
        (["train.epochs"], "train.epochs"),
        (["train.batch_size=abc"], "train.batch_size"),
        (["train.epochs=0"], "train.epochs"),
        (["train.nosuchkey=1"], "train.nosuchkey"),
        (["model.image_size=[30, 32]"], "model.image_size"),
        (["data.max_damaged_share=2"], "data.max_damaged_share"),
        (["nam.masking=sometimes"], "nam.masking"),
        (["train.precision=fp8"], "train.precision"),
        (["model=3"], "model"),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
def test_train_bad_override(world, tmp_path, overrides, named):
    assert_refused(train(world, f"train.run_dir={tmp_path / 'new'}", *overrides), "error:", named)
    assert not (tmp_path / "new").exists()


def test_train_config_file_missing(world, tmp_path):
    assert_refused(run(train_main, ["--config", tmp_path / "nope.yaml"]), "nope.yaml")


@pytest.mark.parametrize("text", ["model: [unclosed", "- a list\n- not a mapping\n", "train: 5\n"])
def test_train_config_file_malformed(tmp_path, text):
    (tmp_path / "bad.yaml").write_text(text)
    line = assert_refused(run(train_main, ["--config", tmp_path / "bad.yaml"]))
    assert "bad.yaml" in line or "train" in line


def test_train_run_dir_is_a_file(world, tmp_path):
    (tmp_path / "file").write_text("keep me")
    before = digest(tmp_path / "file")
    assert_refused(train(world, f"train.run_dir={tmp_path / 'file'}"), "train.run_dir", tmp_path / "file")
    assert digest(tmp_path / "file") == before


def test_train_batch_larger_than_a_rank_gets(world, tmp_path):
    assert_refused(train(world, f"train.run_dir={tmp_path / 'r'}", "train.batch_size=4096"), "train.batch_size=4096")


def test_train_triton_kernel_without_cuda(world, tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the Triton kernel")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert_refused(train(world, f"train.run_dir={tmp_path / 'r'}", "nam.kernel=triton"), "nam.kernel=triton")


@pytest.mark.parametrize("precision", ["fp16", "fp16_reference"])
def test_train_fp16_without_cuda(world, tmp_path, precision):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine trains in fp16")
    overrides = [f"train.precision={precision}", "optim.eps=1e-3"]  # the eps fp16_reference needs, refused for CUDA
    line = assert_refused(train(world, f"train.run_dir={tmp_path / 'r'}", *overrides), f"train.precision={precision}")
    assert "CUDA" in line


def test_train_shards_folder_missing(world, tmp_path):
    assert_refused(
        train(world, f"train.run_dir={tmp_path / 'r'}", f"data.shards={tmp_path / 'noshards'}"), tmp_path / "noshards"
    )


@pytest.mark.parametrize("manifest", ["{not json", '{"shards": 3}', "[]"])
def test_train_manifest_malformed(world, tmp_path, manifest):
    shards = tmp_path / "shards"
    shutil.copytree(world["shards"], shards)
    (shards / "manifest.json").write_text(manifest)
    assert_refused(train(world, f"train.run_dir={tmp_path / 'r'}", f"data.shards={shards}"), "manifest.json")


def test_train_every_shard_missing(world, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(world["shards"], shards)
    for tar in shards.glob("*.tar"):
        tar.unlink()
    assert_refused(train(world, f"train.run_dir={tmp_path / 'r'}", f"data.shards={shards}"), "missing")


def test_train_pretrained_weights_missing(world, tmp_path):
    line = assert_refused(train(world, f"train.run_dir={tmp_path / 'r'}", f"model.pretrained={tmp_path / 'w.pt'}"))
    assert "model.pretrained" in line and "w.pt" in line


@pytest.mark.parametrize(
    "index", ["{broken", '{"weight_map": 3}', '{"weight_map": {"a.weight": "absent.safetensors"}}']
)
def test_train_pretrained_sharded_index_malformed(world, tmp_path, index):
    weights = tmp_path / "clip"
    weights.mkdir()
    (weights / "model.safetensors.index.json").write_text(index)
    line = assert_refused(train(world, f"train.run_dir={tmp_path / 'r'}", f"model.pretrained={weights}"))
    assert "model.safetensors.index.json" in line


# ---------------------------------------------------------------- launcher.train: run folders and checkpoints


def test_train_fresh_start_into_a_run_with_checkpoints_is_refused(world, run_copy):
    before = digest(run_copy)
    line = assert_refused(train(world, f"train.run_dir={run_copy}"), run_copy, "--resume auto", "--overwrite")
    assert "checkpoints" in line
    assert digest(run_copy) == before  # config.yaml, metrics.jsonl, checkpoints and latest untouched


def test_train_fresh_start_into_a_run_with_only_a_final_model_is_refused(world, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(world["run"] / "final", run_dir / "final")
    before = digest(run_dir)
    assert_refused(train(world, f"train.run_dir={run_dir}"), "final model", "--overwrite")
    assert digest(run_dir) == before


def test_train_overwrite_with_resume_is_refused(world, run_copy):
    before = digest(run_copy)
    assert_refused(train(world, f"train.run_dir={run_copy}", "--overwrite", "--resume", "auto"), "--overwrite")
    assert digest(run_copy) == before


def test_train_resume_latest_without_checkpoints(world, tmp_path):
    assert_refused(train(world, f"train.run_dir={tmp_path / 'empty'}", "--resume", "latest"), "no checkpoint")


def test_train_resume_path_missing(world, tmp_path):
    assert_refused(train(world, f"train.run_dir={tmp_path / 'r'}", "--resume", tmp_path / "gone"), tmp_path / "gone")


@pytest.mark.parametrize(
    ("override", "named"), [("model.vision_width=128", "model.vision_width"), ("nam.tap_layer=2", "nam.tap_layer")]
)
def test_train_resume_with_another_architecture_writes_nothing(world, run_copy, override, named):
    before = digest(run_copy)
    line = assert_refused(train(world, f"train.run_dir={run_copy}", "--resume", "auto", override), named)
    assert "checkpoint" in line
    assert digest(run_copy) == before  # config.yaml in particular


def test_train_resume_from_an_exported_model(world, run_copy):
    before = digest(run_copy)
    line = assert_refused(train(world, f"train.run_dir={run_copy}", "--resume", run_copy / "final"), "exported model")
    assert str(run_copy / "final") in line
    assert digest(run_copy) == before


def _damage(tag: Path, kind: str) -> Path:
    if kind == "deepspeed_truncated":
        target = tag / "mp_rank_00_model_states.pt"
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif kind == "rank_state_corrupt":
        target = tag / "rank00000_state.safetensors"
        target.write_bytes(b"\x00garbage" * 50)
    elif kind == "rank_state_missing":
        target = tag / "rank00000_state.safetensors"
        target.unlink()
    elif kind == "train_state_not_json":
        target = tag / "train_state.json"
        target.write_text("{epoch: ")
    else:  # model_config_not_object
        target = tag / "model_config.json"
        target.write_text("[1, 2, 3]")
    return target


DAMAGE = [
    "deepspeed_truncated",
    "rank_state_corrupt",
    "rank_state_missing",
    "train_state_not_json",
    "model_config_list",
]


@pytest.mark.parametrize("kind", DAMAGE)
def test_train_resume_of_a_damaged_checkpoint_names_the_file_and_the_intact_one(world, run_copy, kind):
    tag = run_copy / "checkpoints" / "epoch0002"
    damaged = _damage(tag, kind)
    before = digest(run_copy)
    line = assert_refused(train(world, f"train.run_dir={run_copy}", "--resume", tag), damaged.name, "damaged")
    assert f"--resume {run_copy / 'checkpoints' / 'epoch0001'}" in line
    assert digest(run_copy) == before


def test_train_damaged_checkpoint_without_an_intact_one(world, run_copy, tmp_path):
    shutil.rmtree(run_copy / "checkpoints" / "epoch0001")
    damaged = _damage(run_copy / "checkpoints" / "epoch0002", "deepspeed_truncated")
    assert_refused(train(world, f"train.run_dir={run_copy}", "--resume", "auto"), damaged.name, "damaged")


# ---------------------------------------------------------------- eval


@pytest.fixture
def eval_args(world) -> list[str]:
    return ["--checkpoint", world["export"], "--dataset", "cuhk-pedes", "--root", world["cuhk"]]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--workers", "-1"], "--workers"),
        (["--split", "nosplit"], "nosplit"),
        (["--top-k", "0"], "--top-k"),
        (["--batch-size", "many"], "--batch-size"),
    ],
)
def test_eval_bad_flag(eval_args, extra, named):
    assert_refused(run(eval_main, [*eval_args, *extra]), named)


def test_eval_unknown_dataset(world):
    assert_refused(run(eval_main, ["--checkpoint", world["export"], "--dataset", "x", "--root", world["cuhk"]]), "x")


def test_eval_root_missing(world, tmp_path):
    argv = ["--checkpoint", world["export"], "--dataset", "cuhk-pedes", "--root", tmp_path / "nocuhk"]
    assert_refused(run(eval_main, argv), "nocuhk")


def test_eval_checkpoint_missing(world, tmp_path):
    argv = ["--checkpoint", tmp_path / "nomodel", "--dataset", "cuhk-pedes", "--root", world["cuhk"]]
    assert_refused(run(eval_main, argv), "nomodel")


@pytest.mark.parametrize("text", ["[1, 2]", '{"model": 3, "tap_layer": 1}', "{broken"])
def test_eval_model_config_malformed(world, tmp_path, text):
    model = tmp_path / "model"
    shutil.copytree(world["export"], model)
    (model / "model_config.json").write_text(text)
    argv = ["--checkpoint", model, "--dataset", "cuhk-pedes", "--root", world["cuhk"]]
    assert_refused(run(eval_main, argv), "model_config.json")


def test_eval_architecture_mismatch_names_the_shapes(world, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(world["export"], model)
    described = json.loads((model / "model_config.json").read_text())
    described["model"]["vision_width"] = 128
    (model / "model_config.json").write_text(json.dumps(described))
    argv = ["--checkpoint", model, "--dataset", "cuhk-pedes", "--root", world["cuhk"]]
    line = assert_refused(run(eval_main, argv), "model.safetensors", "shapes differ")
    assert "vision_model" in line and "64" in line and "128" in line


@pytest.mark.parametrize("flag", ["--out", "--save-rankings"])
def test_eval_output_file_in_a_missing_folder_fails_before_scoring(eval_args, tmp_path, flag):
    line = assert_refused(run(eval_main, [*eval_args, flag, tmp_path / "no" / "r.json"]), flag, "does not exist")
    assert "table" not in line


def test_eval_out_is_a_folder(eval_args, tmp_path):
    (tmp_path / "dir").mkdir()
    assert_refused(run(eval_main, [*eval_args, "--out", tmp_path / "dir"]), "--out", "is a folder")


@pytest.mark.parametrize("flag", ["--out", "--save-rankings"])
def test_eval_existing_output_file_is_kept_unless_overwrite(eval_args, tmp_path, flag):
    (tmp_path / "r.json").write_text("earlier results")
    before = digest(tmp_path / "r.json")
    assert_refused(run(eval_main, [*eval_args, flag, tmp_path / "r.json"]), flag, "already exists", "--overwrite")
    assert digest(tmp_path / "r.json") == before
    code, output = run(eval_main, [*eval_args, flag, tmp_path / "r.json", "--overwrite"])
    assert code == 0, output
    assert digest(tmp_path / "r.json") != before


def test_eval_html_is_a_file(eval_args, tmp_path):
    (tmp_path / "page").write_text("mine")
    before = digest(tmp_path / "page")
    assert_refused(run(eval_main, [*eval_args, "--html", tmp_path / "page"]), "--html", "is an existing file")
    assert digest(tmp_path / "page") == before


def test_eval_undecodable_gallery_image_is_named_then_skipped_on_request(world, tmp_path):
    root = tmp_path / "cuhk"
    shutil.copytree(world["cuhk"], root)
    entries = json.loads((root / "reid_raw.json").read_text())
    victim = root / "imgs" / next(e["file_path"] for e in entries if e["split"] == "test")
    victim.write_bytes(b"\x00not an image" * 10)
    argv = ["--checkpoint", world["export"], "--dataset", "cuhk-pedes", "--root", root]
    assert_refused(run(eval_main, argv), "cannot be decoded", victim.name, "--skip-missing")
    code, text = run(eval_main, [*argv, "--skip-missing", "--out", tmp_path / "r.json"])
    assert code == 0 and "Traceback" not in text and victim.name in text
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]


def test_eval_config_with_a_bad_override(world):
    argv = ["--config", world["config"], "--dataset", "cuhk-pedes", "--root", world["cuhk"], "model.embed_dim=[1"]
    assert_refused(run(eval_main, argv), "model.embed_dim")


def test_eval_without_a_model_source(world):
    assert_refused(run(eval_main, ["--dataset", "cuhk-pedes", "--root", world["cuhk"]]), "--checkpoint")


def test_eval_stats_root_missing(tmp_path):
    assert_refused(run(eval_main, ["stats", "--dataset", "rstpreid", "--root", tmp_path / "x"]), "x")


def test_noise_auroc_bad_batch_size(world):
    argv = ["--checkpoint", world["export"], "--data", world["raw"], "--batch-size", "0"]
    assert_refused(run(noise_auroc_main, argv), "--batch-size")


def test_noise_auroc_out_in_a_missing_folder(world, tmp_path):
    argv = ["--checkpoint", world["export"], "--data", world["raw"], "--out", tmp_path / "no" / "a.json"]
    assert_refused(run(noise_auroc_main, argv), "--out", "does not exist")


# ---------------------------------------------------------------- eval export


def test_export_into_the_checkpoint_it_reads_is_refused(run_copy):
    tag = run_copy / "checkpoints" / "epoch0002"
    before = digest(run_copy)
    assert_refused(run(eval_main, ["export", "--checkpoint", tag, "--out", tag]), "--out", tag)
    assert digest(run_copy) == before


@pytest.mark.parametrize("target", ["run", "checkpoints", "inside"])
def test_export_into_a_folder_holding_a_checkpoint_is_refused(world, run_copy, target):
    out = {"run": run_copy, "checkpoints": run_copy / "checkpoints", "inside": run_copy / "checkpoints" / "sub"}
    before = digest(run_copy)
    argv = ["export", "--checkpoint", world["export"], "--out", out[target], "--overwrite"]
    assert_refused(run(eval_main, argv), "--out")
    assert digest(run_copy) == before


def test_export_reading_a_run_into_its_own_final_folder_is_refused(run_copy):
    before = digest(run_copy)
    assert_refused(run(eval_main, ["export", "--checkpoint", run_copy, "--out", run_copy / "final"]), "--out")
    assert digest(run_copy) == before


def test_export_out_is_a_file(world, tmp_path):
    (tmp_path / "f").write_text("x")
    assert_refused(
        run(eval_main, ["export", "--checkpoint", world["export"], "--out", tmp_path / "f"]), "existing file"
    )


def test_export_out_in_a_missing_folder(world, tmp_path):
    out = tmp_path / "a" / "b"
    assert_refused(run(eval_main, ["export", "--checkpoint", world["export"], "--out", out]), "does not exist")


def test_export_out_not_empty_without_overwrite(world, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    before = digest(tmp_path / "other")
    argv = ["export", "--checkpoint", world["export"], "--out", tmp_path / "other"]
    assert_refused(run(eval_main, argv), "not empty", "--overwrite")
    assert digest(tmp_path / "other") == before


def test_export_checkpoint_missing(tmp_path):
    argv = ["export", "--checkpoint", tmp_path / "nomodel", "--out", tmp_path / "hf"]
    assert_refused(run(eval_main, argv), "nomodel")
    assert not (tmp_path / "hf").exists()


# ---------------------------------------------------------------- data.pack and data.pack_dataset


@pytest.fixture
def pack_args(world) -> list[object]:
    return ["--images", world["raw"] / "imgs", "--captions", *caption_files(world["raw"])]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--images-per-shard", "-1"], "--images-per-shard"),
        (["--images-per-shard", "0"], "--images-per-shard"),
        (["--workers", "0"], "--workers"),
        (["--shard-size", "0MB"], "--shard-size"),
        (["--shard-size", "lots"], "--shard-size"),
        (["--format", "zip"], "--format"),
    ],
)
def test_pack_bad_flag(pack_args, tmp_path, extra, named):
    assert_refused(run(pack_main, [*pack_args, "--out", tmp_path / "out", *extra]), named)
    assert not (tmp_path / "out").exists()


def test_pack_images_missing(world, tmp_path):
    argv = ["--images", tmp_path / "noimgs", "--captions", *caption_files(world["raw"]), "--out", tmp_path / "o"]
    assert_refused(run(pack_main, argv), "noimgs")


def test_pack_caption_file_missing(world, tmp_path):
    argv = ["--images", world["raw"] / "imgs", "--captions", tmp_path / "Ts-x.json", "--out", tmp_path / "o"]
    assert_refused(run(pack_main, argv), "Ts-x.json")


def test_pack_caption_file_not_json(world, tmp_path):
    (tmp_path / "Ts-x.json").write_text("{no")
    argv = ["--images", world["raw"] / "imgs", "--captions", tmp_path / "Ts-x.json", "--out", tmp_path / "o"]
    assert_refused(run(pack_main, argv), "Ts-x.json")


def test_pack_out_is_a_file(pack_args, tmp_path):
    (tmp_path / "f").write_text("keep")
    assert_refused(run(pack_main, [*pack_args, "--out", tmp_path / "f"]), "--out", "existing file")
    assert (tmp_path / "f").read_text() == "keep"


def test_pack_out_in_a_missing_folder(pack_args, tmp_path):
    assert_refused(run(pack_main, [*pack_args, "--out", tmp_path / "a" / "b"]), "--out", "does not exist")


def test_pack_out_holds_other_files(pack_args, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    before = digest(tmp_path / "mine")
    assert_refused(run(pack_main, [*pack_args, "--out", tmp_path / "mine"]), "--out", "not empty")
    assert digest(tmp_path / "mine") == before


def test_pack_out_holds_a_checkpoint(pack_args, run_copy):
    before = digest(run_copy)
    assert_refused(run(pack_main, [*pack_args, "--out", run_copy]), "--out", "checkpoint")
    assert digest(run_copy) == before


def test_pack_out_holds_a_packing_of_other_inputs(world, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(world["shards"], shards)
    before = digest(shards)
    argv = ["--images", world["raw"] / "imgs", "--captions", *caption_files(world["raw"])[:2], "--out", shards]
    assert_refused(run(pack_main, [*argv, "--images-per-shard", "4"]), shards, "new --out")
    assert digest(shards) == before


def test_pack_dataset_root_missing(tmp_path):
    argv = ["--dataset", "cuhk-pedes", "--root", tmp_path / "nocuhk", "--out", tmp_path / "o"]
    assert_refused(run(pack_dataset_main, argv), "nocuhk")


@pytest.mark.parametrize("value", ["-1", "0"])
def test_pack_dataset_images_per_shard_out_of_range(world, tmp_path, value):
    argv = ["--dataset", "cuhk-pedes", "--root", world["cuhk"], "--out", tmp_path / "o", "--images-per-shard", value]
    assert_refused(run(pack_dataset_main, argv), "--images-per-shard")


def test_pack_dataset_out_is_a_file(world, tmp_path):
    (tmp_path / "f").write_text("keep")
    argv = ["--dataset", "cuhk-pedes", "--root", world["cuhk"], "--out", tmp_path / "f"]
    assert_refused(run(pack_dataset_main, argv), "--out", "existing file")


def test_pack_dataset_out_in_a_missing_folder(world, tmp_path):
    argv = ["--dataset", "cuhk-pedes", "--root", world["cuhk"], "--out", tmp_path / "a" / "b"]
    assert_refused(run(pack_dataset_main, argv), "--out", "does not exist")


def test_pack_dataset_over_a_packing_of_other_inputs(world, tmp_path):
    """The error of data.pack's resume check used to escape pack_dataset as a traceback."""
    shards = tmp_path / "shards"
    shutil.copytree(world["shards"], shards)
    before = digest(shards)
    argv = ["--dataset", "cuhk-pedes", "--root", world["cuhk"], "--out", shards]
    assert_refused(run(pack_dataset_main, argv), shards)
    assert digest(shards) == before


def test_pack_dataset_unknown_split(world, tmp_path):
    argv = ["--dataset", "cuhk-pedes", "--root", world["cuhk"], "--out", tmp_path / "o", "--split", "dev"]
    assert_refused(run(pack_dataset_main, argv), "dev")


# ---------------------------------------------------------------- data.caption and data.captioning.stats


def caption_args(world, out: Path, model: Path, *extra: object) -> list[object]:
    return ["--images", world["raw"] / "imgs", "--model", model, "--mode", "static", "--out", out, *extra]


def test_caption_a_mistyped_model_does_not_pin_the_next_run(world, tmp_path):
    out = tmp_path / "Ts-x.json"
    assert_refused(run(caption_main, caption_args(world, out, tmp_path / "qwen-typo")), "qwen-typo")
    # The corrected command is not refused for differing from the typo: it gets as far as its own model.
    assert_refused(run(caption_main, caption_args(world, out, tmp_path / "qwen-fixed")), "qwen-fixed")


def test_caption_settings_pinned_by_captions_say_how_to_start_over(world, tmp_path):
    out = tmp_path / "Ts-x.json"
    parts = out.with_suffix(".parts")
    parts.mkdir()
    (parts / "run.json").write_text(json.dumps({"mode": "static", "model": "/models/old", "seed": 0}))
    (parts / "rank00000.jsonl").write_text(
        '{"image": "00000.jpg", "caption": "a man", "template": null, "dirty": false}\n'
    )
    before = digest(parts)
    line = assert_refused(run(caption_main, caption_args(world, out, tmp_path / "new")), "was made with", parts)
    assert "move" in line and "--out" in line
    assert digest(parts) == before


@pytest.mark.parametrize(
    ("extra", "named"),
    [(["--batch-size", "0"], "--batch-size"), (["--max-new-tokens", "-3"], "--max-new-tokens"),
     (["--world-size", "0"], "--world-size"), (["--max-images", "0"], "--max-images")],
)  # fmt: skip
def test_caption_numeric_flag_out_of_range(world, tmp_path, extra, named):
    assert_refused(run(caption_main, caption_args(world, tmp_path / "Ts.json", tmp_path / "m", *extra)), named)


def test_caption_out_not_json(world, tmp_path):
    assert_refused(run(caption_main, caption_args(world, tmp_path / "Ts.txt", tmp_path / "m")), "Ts.txt")


def test_caption_images_missing(tmp_path):
    argv = ["--images", tmp_path / "noimgs", "--model", tmp_path, "--mode", "static", "--out", tmp_path / "T.json"]
    assert_refused(run(caption_main, argv), "noimgs")


def test_caption_merge_without_parts(tmp_path):
    assert_refused(run(caption_main, ["--merge", "--out", tmp_path / "never.json"]), "nothing to merge")


@pytest.mark.parametrize("text", [None, "{broken", "[1, 2]"])
def test_caption_stats_bad_file(tmp_path, text):
    path = tmp_path / "Ts-q.json"
    if text is not None:
        path.write_text(text)
    assert_refused(run(caption_stats_main, [path]), "Ts-q.json")


# ---------------------------------------------------------------- eval.plot and data.synthetic


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        (['{"step": 1, "loss": 1.0}', "[1, 2]", '{"step": 2, "loss": 1.0}'], "metrics.jsonl:2"),
        (['{"step": 1, "loss": "high"}', '{"step": 2, "loss": 1.0}'], "loss"),
        (['{"step": "one", "loss": 1.0}'], "step"),
        (['{"step": 1, "loss": 1.0}', "{torn", '{"step": 2, "loss": 1.0}'], "metrics.jsonl:2"),
        (["3"], "metrics.jsonl:1"),
        (['{"epoch": 0, "eval": "cuhk", "split": "val", "R1": null}'], "R1"),
        (['{"epoch": 0, "noise_exchange_s": 1.0}'], "no training records"),
    ],
)
def test_plot_malformed_metrics(tmp_path, lines, named):
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert_refused(run(plot_main, [tmp_path]), named)


def test_plot_no_metrics(tmp_path):
    assert_refused(run(plot_main, [tmp_path / "norun"]), "norun")


def test_plot_out_is_a_folder(world, tmp_path):
    (tmp_path / "pic").mkdir()
    assert_refused(run(plot_main, [world["run"], "--out", tmp_path / "pic"]), "--out")


@pytest.mark.parametrize(
    ("extra", "named"), [(["--size", "big"], "--size"), (["--train-images", "ten"], "--train-images")]
)
def test_synthetic_bad_flag(tmp_path, extra, named):
    assert_refused(run(synthetic_main, ["--out", tmp_path / "s", *extra]), named)


# ---------------------------------------------------------------- the boundary itself


def test_boundary_turns_any_exception_into_one_line_and_debug_shows_the_traceback(monkeypatch):
    @error_boundary
    def broken(argv):
        return {}["absent"]

    line = assert_refused(run(broken, []), "error: KeyError", "--debug")
    assert line.count("\n") == 0
    code, text = run(broken, ["--debug"])
    assert code == 2 and "Traceback" in text
    monkeypatch.setenv("TBPS_DEBUG", "1")
    assert "Traceback" in run(broken, [])[1]


def test_debug_reaches_a_subcommand_and_a_failed_export_leaves_nothing(world, tmp_path, monkeypatch):
    def fails(model, out_dir):
        (Path(out_dir) / "config.json").write_text("{}")  # half an export
        raise RuntimeError("disk full")

    monkeypatch.setattr("eval.export.export_transformers", fails)
    argv = ["export", "--checkpoint", world["export"], "--out", tmp_path / "hf"]
    assert_refused(run(eval_main, argv), "error: RuntimeError: disk full", "--debug")
    code, text = run(eval_main, [*argv, "--debug"])
    assert code == 2 and "Traceback" in text and "disk full" in text
    assert list(tmp_path.iterdir()) == []  # neither --out nor its temporary sibling is left behind


def test_boundary_prints_our_errors_once_over_several_ranks(monkeypatch):
    from engine.config import ConfigError

    @error_boundary
    def refuses(argv):
        raise ConfigError("train.epochs must be > 0 (got 0)")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run(refuses, []) == (2, "")  # rank 0 says it
    monkeypatch.setenv("RANK", "0")
    assert_refused(run(refuses, []), "train.epochs")


def test_damaged_share_threshold(world):
    from data.manifest import Manifest
    from engine.runtime.data_health import DamagedDataError, check_epoch_data

    manifest = Manifest.load(world["shards"])
    check_epoch_data(0, {"undecodable_image": 10}, trained=90, manifest=manifest, max_damaged_share=0.1)  # 10%
    with pytest.raises(DamagedDataError, match=r"11 of 100 samples .*\(11.0% > data.max_damaged_share=0.1"):
        check_epoch_data(0, {"undecodable_image": 11}, trained=89, manifest=manifest, max_damaged_share=0.1)
    with pytest.raises(DamagedDataError, match="epoch 2 trained on 0 samples"):
        check_epoch_data(2, {"truncated_shard": 4}, trained=0, manifest=manifest, max_damaged_share=1.0)
    # a missing shard counts its samples (16 captions per shard here)
    with pytest.raises(DamagedDataError, match="16 of 64"):
        check_epoch_data(0, {"missing_shard": 1}, trained=48, manifest=manifest, max_damaged_share=0.1)


def test_overwrite_moves_the_old_run_aside(run_copy):
    from engine.runtime.run_folder import prepare_run_folder

    before = {Path(k).relative_to(run_copy): v for k, v in digest(run_copy).items()}
    moved = prepare_run_folder(run_copy, resume=None, overwrite=True)
    assert not run_copy.exists() and moved.name.startswith("run.old-")
    assert {Path(k).relative_to(moved): v for k, v in digest(moved).items()} == before


# ---------------------------------------------------------------- real training processes


def _subprocess(command: list[object], **env: str) -> tuple[int, str]:
    environment = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"} | env
    result = subprocess.run(
        [str(c) for c in command], cwd=REPO, env=environment, capture_output=True, text=True, timeout=600
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.slow
def test_train_on_unreadable_shards_fails_and_writes_no_final_model(world, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(world["shards"], shards)
    for tar in shards.glob("*.tar"):
        tar.write_bytes(b"\x00" * 1024)  # an empty tar archive: no record
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "launcher.train", "--config", world["config"], f"data.shards={shards}"]
    result = _subprocess([*command, f"train.run_dir={run_dir}"])
    assert_refused(result, "epoch 0 trained on 0 samples", shards, "no model was written")
    assert not (run_dir / "final").exists()
    assert "done" not in result[1]


@pytest.mark.slow
@pytest.mark.multirank
def test_two_ranks_print_a_user_error_once(world, tmp_path):
    """Two rank processes as a launcher starts them (RANK, WORLD_SIZE): the check fails on both, one line is printed."""
    command = [sys.executable, "-m", "launcher.train", "--config", world["config"], f"train.run_dir={tmp_path / 'r'}"]
    environment = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2"}
    ranks = [
        subprocess.Popen(
            [*command, "train.batch_size=4096"],
            cwd=REPO,
            env=environment | {"RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in ranks]
    assert [process.returncode for process in ranks] == [2, 2]
    text = "".join(outputs)
    assert "Traceback" not in text
    assert text.count("error: rank 0 of 2 gets no full batch in epoch 0") == 1, text[-3000:]
    assert "train.batch_size=4096" in last_line(outputs[0]) and "error" not in outputs[1]
    assert last_line(outputs[0]).startswith("error: rank 0 of 2 gets no full batch in epoch 0")
