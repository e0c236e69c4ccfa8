"""launcher/wheelhouse.py without a registry: what it collects, at which versions, for which platforms, and what it
refuses before downloading anything. The collection itself runs in `make test-floor`, whose offline install of it
is tests/test_offline_install.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.wheelhouse import (
    IMAGE_LACKS,
    OPTIONAL,
    TOOL,
    WheelhouseError,
    locked_versions,
    main,
    platform_tags,
    wanted,
)
from tests.helpers import REPO, assert_refused, digest, run

PYTORCH_IMAGE_HAS = {"torch", "triton", "numpy", "torchvision", "nvidia-cublas", "nvidia-nccl-cu13"}


def test_the_lock_pins_everything_the_wheelhouse_collects():
    pins = locked_versions()
    requirements = wanted(sorted(OPTIONAL), pins)
    assert len(requirements) == len(set(IMAGE_LACKS) | {n for names in OPTIONAL.values() for n in names})
    for requirement in requirements:
        name, version = requirement.split("==")
        assert pins[name] == version
    assert not PYTORCH_IMAGE_HAS & {r.split("==")[0] for r in requirements}  # the image's own are never replaced


def test_by_default_only_what_a_pytorch_image_lacks(tmp_path: Path):
    names = [r.split("==")[0] for r in wanted([], locked_versions())]
    assert names == list(IMAGE_LACKS)
    assert {"deepspeed", "webdataset", "mosaicml-streaming", "open-clip-torch"} <= set(names)
    assert not {"wandb", "faiss-cpu", "transformers"} & set(names)
    lock = tmp_path / "requirements.txt"
    lock.write_text("deepspeed==0.19.8\n    # via tbps-mllm\n")
    with pytest.raises(WheelhouseError, match="pins no version of hjson"):
        wanted([], locked_versions(lock))


def test_platform_tags_name_every_manylinux_glibc():
    tags = platform_tags("x86_64")
    assert tags[0] == "manylinux_2_39_x86_64" and "manylinux_2_14_x86_64" in tags and "manylinux_2_5_x86_64" in tags
    assert tags[-3:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    assert all(tag.endswith("_aarch64") for tag in platform_tags("aarch64"))


def test_outputs_are_checked_before_any_download(tmp_path: Path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    before = digest(taken)
    assert_refused(run(main, ["--out", taken]), "--out", "not empty")
    assert_refused(run(main, ["--out", tmp_path / "no" / "such"]), "--out", "does not exist")
    assert_refused(run(main, ["--out", tmp_path / "w", "--python-version", "three"]), "--python-version")
    assert digest(taken) == before and not (tmp_path / "w").exists()
    code, _ = run(main, ["--out", REPO / "wheelhouse-test-never-written", "--with", "tensorflow"])
    assert code == 2 and not (REPO / "wheelhouse-test-never-written").exists()
    assert TOOL == "python -m launcher.wheelhouse"
