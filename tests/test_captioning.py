"""`python -m data.captioning` end to end with a tiny randomly initialised Qwen2-VL (and LLaVA) saved to disk and loaded
through the CLI's own path: both modes, determinism, a killed run resumed, failures and their retry, a 2-process
run under torchrun, and packed shards as the source. The captions are gibberish; their bookkeeping is the test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from data.captioning.cli import main
from data.captioning.instructions import load_instructions
from data.captioning.model import LocalCaptioner
from data.captioning.stats import main as stats_main
from data.captioning.tiny_model import build_tiny_model
from data.synthetic import PRETRAIN_DIR, generate
from tests.helpers import REPO

pytestmark = pytest.mark.slow
IMAGES = 16
COMMON = ["--max-new-tokens", "12", "--no-progress"]
SUBPROCESS_ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # 2 tiny-op threads only contend


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen2_vl"), family="qwen2_vl")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """The synthetic pedestrians' pretraining folder: imgs/ plus its four caption files."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(
        root, train_images=IMAGES, test_identities=2, images_per_test_identity=1, split_identities=1, progress=False
    )
    return root / PRETRAIN_DIR


def caption(out: Path, model: Path, mode: str, *extra: str, source: tuple[str, Path]) -> int:
    return main([source[0], str(source[1]), "--model", str(model), "--mode", mode, "--out", str(out), *COMMON, *extra])


def read_outputs(out: Path) -> tuple[dict, list[dict], list[dict]]:
    log = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    failures = [json.loads(line) for line in out.with_suffix(".failures.jsonl").read_text().splitlines()]
    return json.loads(out.read_text()), log, failures


def part_rows(out: Path) -> list[dict]:
    parts = sorted(p for p in out.with_suffix(".parts").glob("rank*.jsonl") if not p.name.endswith("failures.jsonl"))
    return [json.loads(line) for part in parts for line in part.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tiny_qwen: Path, synthetic: Path, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted runs, batch 4, one per mode: what every other way of running must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    outs = {"static": root / "Ts-tiny.json", "dynamic": root / "Td-tiny.json"}
    for mode, out in outs.items():
        assert caption(out, tiny_qwen, mode, "--batch-size", "4", source=("--images", synthetic / "imgs")) == 0
    return outs


def test_both_modes_caption_every_image_with_the_chosen_templates(reference, synthetic: Path):
    names = sorted(p.name for p in (synthetic / "imgs").iterdir())
    instructions = load_instructions()
    for mode, out in reference.items():
        captions, log, failures = read_outputs(out)
        assert sorted(captions) == names and failures == []
        assert all(isinstance(text, str) and text.strip() == text and text for text in captions.values())
        assert [row["image"] for row in log] == names
        expected = [instructions.template_id(name, 0) if mode == "dynamic" else None for name in names]
        assert [row["template"] for row in log] == expected
        assert sorted(row["image"] for row in part_rows(out)) == names  # each image appended exactly once
    templates = [row["template"] for row in read_outputs(reference["dynamic"])[1]]
    assert all(0 <= t < len(instructions.templates) for t in templates) and len(set(templates)) > 1
    static, dynamic = json.loads(reference["static"].read_text()), json.loads(reference["dynamic"].read_text())
    assert static != dynamic  # the instruction reaches the model


def test_the_same_command_twice_gives_the_same_captions_and_batch_size_does_not_matter(
    reference, tiny_qwen: Path, synthetic: Path, tmp_path: Path
):
    out = tmp_path / "Td-again.json"
    assert caption(out, tiny_qwen, "dynamic", "--batch-size", "3", source=("--images", synthetic / "imgs")) == 0
    assert read_outputs(out) == read_outputs(reference["dynamic"])


def test_a_finished_run_rerun_captions_nothing_and_rewrites_the_same_files(
    reference, tiny_qwen: Path, synthetic: Path, tmp_path: Path, capsys
):
    out = tmp_path / "Ts-tiny.json"
    shutil.copytree(reference["static"].with_suffix(".parts"), out.with_suffix(".parts"))
    assert caption(out, tiny_qwen, "static", source=("--images", synthetic / "imgs")) == 0
    assert "0 captioned, 0 failed, 0 flagged (slot or markup left) in 0.0 s" in capsys.readouterr().out
    assert read_outputs(out) == read_outputs(reference["static"])


def test_max_images_stops_part_way_and_the_rerun_completes_exactly(
    reference, tiny_qwen: Path, synthetic: Path, tmp_path: Path
):
    out, source = tmp_path / "Td-tiny.json", ("--images", synthetic / "imgs")
    assert caption(out, tiny_qwen, "dynamic", "--batch-size", "4", "--max-images", "5", source=source) == 0
    assert not out.exists() and len(part_rows(out)) == 5  # 5 is not a whole number of batches
    assert caption(out, tiny_qwen, "dynamic", "--batch-size", "4", source=source) == 0
    assert read_outputs(out) == read_outputs(reference["dynamic"])
    assert len(part_rows(out)) == IMAGES


def test_a_killed_run_resumes_without_losing_or_duplicating_a_caption(
    reference, tiny_qwen: Path, synthetic: Path, tmp_path: Path
):
    out = tmp_path / "Td-tiny.json"
    part = out.with_suffix(".parts") / "rank00000.jsonl"
    command = [sys.executable, "-m", "data.captioning", "--images", str(synthetic / "imgs"), "--model", str(tiny_qwen)]
    command += ["--mode", "dynamic", "--out", str(out), "--batch-size", "1", *COMMON]
    process = subprocess.Popen(command, cwd=REPO, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (part.is_file() and part.read_text().count("\n") >= 3) and process.poll() is None:
        assert time.monotonic() < deadline, "the captioning subprocess wrote nothing"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill: {process.stderr.read()[-2000:]}"
    written = part.read_text().count("\n")
    assert 3 <= written < IMAGES and not out.exists()
    with part.open("a") as handle:  # as if killed in the middle of a write
        handle.write('{"image": "000099.jpg", "capt')
    assert caption(out, tiny_qwen, "dynamic", "--batch-size", "1", source=("--images", synthetic / "imgs")) == 0
    assert read_outputs(out) == read_outputs(reference["dynamic"])
    assert sorted(row["image"] for row in part_rows(out)) == sorted(json.loads(out.read_text()))


def test_failed_images_are_recorded_skipped_on_rerun_and_retried_on_request(
    reference, tiny_qwen: Path, synthetic: Path, tmp_path: Path, capsys
):
    images = tmp_path / "imgs"
    shutil.copytree(synthetic / "imgs", images)
    good = (images / "000003.jpg").read_bytes()
    (images / "000003.jpg").write_bytes(good[: len(good) // 3])  # truncated: fails to decode
    Image.new("RGB", (1, 300)).save(images / "zz_thin.png")  # decodes, but Qwen2-VL refuses aspect ratios > 200
    out, source = tmp_path / "Ts-tiny.json", ("--images", images)
    assert caption(out, tiny_qwen, "static", "--batch-size", "4", source=source) == 0
    captions, _, failures = read_outputs(out)
    assert {row["image"]: row["stage"] for row in failures} == {"000003.jpg": "read", "zz_thin.png": "generate"}
    assert "aspect ratio" in failures[1]["reason"]
    expected = json.loads(reference["static"].read_text())
    assert captions == {name: text for name, text in expected.items() if name != "000003.jpg"}

    capsys.readouterr()
    assert caption(out, tiny_qwen, "static", source=source) == 0  # failures are not retried unasked
    assert "0 captioned, 0 failed" in capsys.readouterr().out
    (images / "000003.jpg").write_bytes(good)  # both repaired
    Image.new("RGB", (64, 128), (90, 20, 20)).save(images / "zz_thin.png")
    assert caption(out, tiny_qwen, "static", "--retry-failed", source=source) == 0
    captions, _, failures = read_outputs(out)
    assert failures == [] and sorted(captions) == sorted([*expected, "zz_thin.png"])
    assert captions["000003.jpg"] == expected["000003.jpg"]


def test_an_empty_answer_is_a_failure_and_flagged_captions_are_counted(
    tiny_qwen: Path, synthetic: Path, tmp_path: Path, monkeypatch
):
    """The random model never answers with nothing or with a template slot, so the model's answers are edited here."""
    real_caption = LocalCaptioner.caption

    def edited(self, images, instructions, **kwargs):
        texts = real_caption(self, images, instructions, **kwargs)
        return ["", "a [clothing description] person", *texts[2:]]

    monkeypatch.setattr(LocalCaptioner, "caption", edited)
    out = tmp_path / "Td-tiny.json"
    assert caption(out, tiny_qwen, "dynamic", "--batch-size", "4", source=("--images", synthetic / "imgs")) == 0
    captions, log, failures = read_outputs(out)
    assert len(failures) == IMAGES // 4 and {row["stage"] for row in failures} == {"empty"}
    assert sum(row["dirty"] for row in log) == IMAGES // 4 == sum("[" in text for text in captions.values())


@pytest.mark.multirank
def test_two_processes_under_torchrun_give_the_one_process_result(
    reference, tiny_qwen: Path, synthetic: Path, tmp_path: Path
):
    out = tmp_path / "Td-tiny.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "data.captioning"]
    command += ["--images", str(synthetic / "imgs"), "--model", str(tiny_qwen), "--mode", "dynamic"]
    command += ["--out", str(out), "--batch-size", "4", *COMMON]
    result = subprocess.run(command, cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    parts = out.with_suffix(".parts")
    assert (parts / "rank00000.jsonl").read_text() and (parts / "rank00001.jsonl").read_text()
    assert {p.name for p in parts.glob("*.done")} == {"rank00000-of-00002.done", "rank00001-of-00002.done"}
    assert read_outputs(out) == read_outputs(reference["dynamic"])
    assert result.stdout.count("wrote ") >= 1


def test_packed_shards_are_a_source_like_the_image_folder(reference, tiny_qwen: Path, synthetic: Path, tmp_path: Path):
    from data.pack import pack

    shards = tmp_path / "shards"
    pack(synthetic / "imgs", sorted(synthetic.glob("T*.json")), shards, images_per_shard=5)
    out = tmp_path / "Td-tiny.json"
    assert caption(out, tiny_qwen, "dynamic", "--batch-size", "4", source=("--shards", shards)) == 0
    assert json.loads(out.read_text()) == json.loads(reference["dynamic"].read_text())


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llava"), family="llava")


def test_a_llava_model_captions_too(tiny_llava: Path, synthetic: Path, tmp_path: Path):
    out = tmp_path / "Ts-llava.json"
    assert caption(out, tiny_llava, "static", "--batch-size", "8", source=("--images", synthetic / "imgs")) == 0
    captions, log, failures = read_outputs(out)
    assert len(captions) == IMAGES and failures == [] and [row["template"] for row in log] == [None] * IMAGES


def test_a_model_that_fails_on_every_image_stops_the_run_without_marking_the_images_failed(
    tiny_llava: Path, synthetic: Path, tmp_path: Path, capsys
):
    """A tokenizer that emits token_type_ids, which LLaVA's generate refuses: a setup problem, not 16 bad images."""
    model = tmp_path / "broken_llava"
    shutil.copytree(tiny_llava, model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(
        json.dumps(config | {"model_input_names": ["input_ids", "token_type_ids", "attention_mask"]})
    )
    out, source = tmp_path / "Ts-llava.json", ("--images", synthetic / "imgs")
    assert caption(out, model, "static", "--batch-size", "8", source=source) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: generation failed on the first 16 images: ValueError") and "token_type_ids" in error
    config_path.write_text(json.dumps(config))  # repaired: no --retry-failed needed
    assert caption(out, model, "static", "--batch-size", "8", source=source) == 0
    captions, _, failures = read_outputs(out)
    assert len(captions) == IMAGES and failures == []


def test_user_mistakes_give_one_line_errors(reference, tiny_qwen: Path, synthetic: Path, tmp_path: Path, capsys):
    images = ("--images", synthetic / "imgs")
    cases = [
        (lambda: caption(tmp_path / "Ts.json", tmp_path / "missing", "static", source=images), "no model at"),
        (lambda: caption(tmp_path / "Ts.json", tiny_qwen, "static", source=("--images", tmp_path / "no")), "not found"),
        (lambda: caption(tmp_path / "Ts.txt", tiny_qwen, "static", source=images), "must name a .json"),
        (lambda: caption(tmp_path / "Ts.json", tiny_qwen, "static", source=("--shards", tmp_path)), "no manifest.json"),
        (lambda: main(["--merge", "--out", str(tmp_path / "never.json")]), "nothing to merge"),
    ]
    parts = reference["static"].with_suffix(".parts")
    shutil.copytree(parts, tmp_path / "Ts-tiny.parts")
    other_seed = lambda: caption(tmp_path / "Ts-tiny.json", tiny_qwen, "static", "--seed", "1", source=images)  # noqa: E731
    cases.append((other_seed, "was made with seed=0, this run has 1"))
    for run, message in cases:
        assert run() == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("error: ") and message in error[0], error


def test_caption_stats_runs_on_the_synthetic_and_the_captioned_files(reference, synthetic: Path, capsys):
    files = [*sorted(synthetic.glob("T*.json")), reference["static"], reference["dynamic"]]
    assert stats_main([str(f) for f in files]) == 0
    table = capsys.readouterr().out
    assert all(f.name in table for f in files)
    assert stats_main(["--json", *map(str, files)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["captions"] for row in rows] == [IMAGES] * len(files)
    by_file = {row["file"]: row for row in rows}
    assert by_file["Td-shikra.json"]["pattern_entropy_bits"] > by_file["Ts-shikra.json"]["pattern_entropy_bits"]
