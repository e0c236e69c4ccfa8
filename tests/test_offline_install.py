"""The offline install onto a PyTorch image (docs/cluster.md): the wheelhouse that `python -m launcher.wheelhouse`
wrote for this interpreter's Python installs with pip --no-index --no-deps into a fresh --target, and with that
folder on PYTHONPATH an interpreter that has torch but none of the project's other dependencies trains.

It runs in the floor environment (`make test-floor`), whose interpreter is laid out as such an image is, and which
names the wheelhouse in TBPS_WHEELHOUSE; elsewhere it is skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.pack import pack
from data.synthetic import generate
from tests.helpers import REPO, SOURCES, TINY

WHEELHOUSE = os.environ.get("TBPS_WHEELHOUSE")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not WHEELHOUSE, reason="make test-floor names the wheelhouse")]


def image_environment() -> dict[str, str]:
    """This environment without PYTHONPATH and without any pip setting: no index, no find-links, no config file."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PYTHONUNBUFFERED": "1"}


def test_the_wheelhouse_installs_offline_and_the_image_interpreter_trains(tmp_path: Path):
    env = image_environment()
    missing = subprocess.run(
        [sys.executable, "-c", "import deepspeed"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert missing.returncode != 0 and "No module named 'deepspeed'" in missing.stderr  # the image lacks it

    wheels = sorted(Path(REPO, WHEELHOUSE).glob("*.whl"))
    assert any(w.name.startswith("deepspeed-") for w in wheels), wheels
    site = tmp_path / "site"
    install = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--no-deps",
        "--target",
        str(site),
        *map(str, wheels),
    ]
    installed = subprocess.run(install, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]

    generate(tmp_path / "synthetic", seed=0, train_images=16, test_identities=2, progress=False)
    raw = tmp_path / "synthetic" / "luperson_mllm"
    pack(raw / "imgs", [raw / f"{s}.json" for s in SOURCES], tmp_path / "shards", images_per_shard=8)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("SHARDS", str(tmp_path / "shards")).replace("CUHK", str(tmp_path / "nowhere")))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "launcher.train", "--config", str(config), f"train.run_dir={run_dir}"]
    command += ["train.max_steps=1", "train.log_every_steps=1", "eval.every_epochs=0"]
    trained = subprocess.run(
        command, cwd=REPO, env=env | {"PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=600
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in steps if "loss" in record] == [1], steps
    assert (run_dir / "checkpoints" / "step00000001" / "model.safetensors").is_file()
    imported = subprocess.run(
        [sys.executable, "-c", "import deepspeed, webdataset, streaming, open_clip; print(deepspeed.__file__)"],
        cwd=REPO,
        env=env | {"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    location = imported.stdout.strip().splitlines()[-1]  # after DeepSpeed's own log line
    assert location.startswith(str(site)), imported.stderr[-2000:]  # from the wheelhouse, not the image
