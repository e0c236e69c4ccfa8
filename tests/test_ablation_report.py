"""The ablation report's arithmetic (launcher/ablation.py), without training anything."""

from __future__ import annotations

from pathlib import Path

from launcher.ablation import TARGETS, paired_differences


def test_ablation_report_pairs_rows_by_seed() -> None:
    def result(row: str, seed: int, r1: float) -> dict:
        return {"row": row, "seed": seed, "targets": {t: {"R1": r1, "mAP": r1} for t in TARGETS}}

    results = {
        "tde_em": [result("tde_em", 0, 10.0), result("tde_em", 1, 20.0)],
        "tde_nam": [result("tde_nam", 1, 23.0), result("tde_nam", 0, 11.0)],  # out of order: matched by seed
        "em_00": [result("em_00", 0, 5.0)],  # no NAM partner: no line
    }
    lines = paired_differences(results)
    nam = [line for line in lines if line.startswith("| NAM against EM at 15%")]
    assert len(nam) == 1 and "+2.00 ± 1.41 (+1.00, +3.00)" in nam[0]
    assert not any("0% wrong words" in line for line in lines)
    assert paired_differences({"tde_nam": results["tde_nam"]}) == []


def test_a_failed_run_stops_the_ablation_before_the_remaining_runs(monkeypatch, tmp_path, capsys) -> None:
    import time

    import launcher.ablation as ablation

    started = []

    def run_row(out, row, seed, **_):
        started.append((row.name, seed))
        time.sleep(0.5)  # a run takes time: the queue is not drained when the failure is seen, even under load
        if row.name == "static_em":
            raise ablation.AblationError(f"-m launcher.train failed with status 1 (log {out}/runs/static_em/train.log)")
        return {"targets": {}}

    monkeypatch.setattr(ablation, "build_world", lambda *a, **k: None)
    monkeypatch.setattr(ablation, "shards_for", lambda *a, **k: None)
    monkeypatch.setattr(ablation, "layer_sweep", lambda *a, **k: {"best_layer": 4, "per_layer": {}})
    monkeypatch.setattr(ablation, "run_row", run_row)
    code = ablation.main(["--out", str(tmp_path), "--clip", str(tmp_path / "clip.pt"), "--jobs", "1"])
    assert code == 2
    assert "static_em/train.log" in capsys.readouterr().err
    assert len(started) <= 3  # of 31 runs: the failure stops the queue


def test_a_measured_run_keeps_final_and_drops_its_checkpoints_unless_asked(monkeypatch, tmp_path) -> None:
    import launcher.ablation as ablation

    def train(*args, log):  # stands in for the training subprocess: what launcher.train leaves in the run folder
        run_dir = Path(next(a for a in args if a.startswith("train.run_dir=")).split("=", 1)[1])
        for tag in ("checkpoints/epoch0001", "checkpoints/epoch0002", "final"):
            (run_dir / tag).mkdir(parents=True)
            (run_dir / tag / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(ablation, "_python", train)
    monkeypatch.setattr(ablation, "shards_for", lambda *a, **k: tmp_path / "shards")
    monkeypatch.setattr(ablation, "_load_model", lambda path: path)
    monkeypatch.setattr(ablation, "evaluate_targets", lambda model, targets: {"measured": str(model)})
    row = ablation.ROWS_BY_NAME["tde_em"]
    size = ablation.WorldSize()
    for seed, keep in ((0, False), (1, True)):
        result = ablation.run_row(tmp_path, row, seed, clip=tmp_path / "clip.pt", tap_layer=4, size=size,
                                  keep_checkpoints=keep)  # fmt: skip
        run_dir = tmp_path / "runs" / "tde_em" / f"seed{seed}" / "run"
        assert result["targets"] == {"measured": str(run_dir / "final")}
        assert (run_dir.parent / "result.json").is_file() and (run_dir / "final" / "model.safetensors").is_file()
        assert (run_dir / "checkpoints" / "epoch0002").is_dir() == keep


def test_a_row_without_wrong_words_reports_no_auroc_rather_than_none(tmp_path) -> None:
    import math

    import launcher.ablation as ablation

    targets = {t: {"R1": 10.0, "mAP": 20.0} for t in TARGETS}
    masking = {"wrong": {"mean": math.nan, "words": 0}, "correct": {"mean": 0.125, "words": 900}, "p": 0.15}
    results = {
        "nam_00": [{"row": "nam_00", "seed": 0, "seconds": 1.0, "targets": targets, "masking_epoch_2": masking,
                    "noise_auroc_per_epoch": {"0": None, "1": None}}],
        "nam_30": [{"row": "nam_30", "seed": 0, "seconds": 1.0, "targets": targets, "masking_epoch_2": masking
                    | {"wrong": {"mean": 0.151, "words": 90}}, "noise_auroc_per_epoch": {"0": 0.5746, "1": 0.5604}}],
    }  # fmt: skip
    rows = [ablation.ROWS_BY_NAME["nam_00"], ablation.ROWS_BY_NAME["nam_30"]]
    report = ablation.write_report(tmp_path, rows, results, {"per_layer": {}, "best_layer": 4}, {}).read_text()
    line = next(line for line in report.splitlines() if line.startswith("- nam_00 seed 0"))
    assert "noise AUROC: none (no wrong words in its captions)" in line and "wrong none vs correct 0.125" in line
    assert "None" not in line and "nan" not in line
    line = next(line for line in report.splitlines() if line.startswith("- nam_30 seed 0"))
    assert "noise AUROC by epoch 0: 0.5746, 1: 0.5604" in line and "wrong 0.151 vs correct 0.125" in line


def test_a_result_records_the_environment_of_its_evaluation_and_its_training(monkeypatch, tmp_path) -> None:
    import json

    import launcher.ablation as ablation

    def train(*args, log):  # stands in for the training process: the run folder it leaves
        run_dir = Path(next(a for a in args if a.startswith("train.run_dir=")).split("=", 1)[1])
        (run_dir / "final").mkdir(parents=True)
        (run_dir / "environment.json").write_text(json.dumps({"cpu": "trainer's", "torch_threads": 1}))

    monkeypatch.setattr(ablation, "shards_for", lambda *a: tmp_path / "shards")
    monkeypatch.setattr(ablation, "_python", train)
    monkeypatch.setattr(ablation, "_load_model", lambda path: None)
    monkeypatch.setattr(ablation, "evaluate_targets", lambda model, targets: {t: {"R1": 1.0} for t in TARGETS})
    options = {"clip": tmp_path / "clip.pt", "tap_layer": 1, "size": ablation.REDUCED}
    result = ablation.run_row(tmp_path, ablation.ROWS_BY_NAME["tde_em"], 0, **options)
    assert {"cpu", "platform", "python", "torch", "numpy", "torch_threads"} <= set(result["environment"])
    assert result["training_environment"] == {"cpu": "trainer's", "torch_threads": 1}
    written = json.loads((tmp_path / "runs" / "tde_em" / "seed0" / "result.json").read_text())
    assert written["environment"] == result["environment"]
