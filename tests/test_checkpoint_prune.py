import json
from pathlib import Path

from engine.runtime.checkpoint import TRAIN_STATE_FILE, _prune


def test_pruning_removes_the_oldest_by_training_position_not_by_tag_name(tmp_path: Path):
    positions = {"step00000010": (0, 10), "epoch0001": (1, 0), "step00000020": (1, 10), "epoch0002": (2, 0)}
    positions["step00000025"] = (2, 5)
    for tag, (epoch, batches) in positions.items():
        (tmp_path / tag).mkdir()
        (tmp_path / tag / TRAIN_STATE_FILE).write_text(json.dumps({"epoch": epoch, "batches_done": batches}))
    _prune(tmp_path, keep=3, current="step00000025")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch0002", "step00000020", "step00000025"]


def test_the_best_checkpoint_survives_pruning(tmp_path: Path):
    for epoch in range(1, 5):
        (tmp_path / f"epoch{epoch:04d}").mkdir()
        (tmp_path / f"epoch{epoch:04d}" / TRAIN_STATE_FILE).write_text(json.dumps({"epoch": epoch, "batches_done": 0}))
    (tmp_path / "best.json").write_text(json.dumps({"tag": "epoch0001", "R1": 50.0}))
    _prune(tmp_path, keep=2, current="epoch0004")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["epoch0001", "epoch0004"]
