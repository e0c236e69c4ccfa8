"""The helpers of benchmarks/gpu_check.sh: library versions, the synthetic training shards, and the summary.

python -m benchmarks.gpu_check_report versions            library versions as JSON on stdout
python -m benchmarks.gpu_check_report check-versions      each declared dependency against its range (exit 2 if
                                                          a required one is missing)
python -m benchmarks.gpu_check_report data DIR            synthetic shards for 35 steps of 64 under DIR/shards
python -m benchmarks.gpu_check_report summary OUT_DIR     OUT_DIR/gpu_check.json and gpu_check.txt from the parts
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import re
import sys
import tomllib
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime
from pathlib import Path

from data.cli_errors import error_boundary

TRAIN_IMAGES = 576  # x 4 captions = 2,304 samples: 36 steps of 64 on one GPU (30, then 5 more after the resume)
LIBRARIES = ("torch", "triton", "deepspeed", "transformers", "numpy", "webdataset", "mosaicml-streaming")


def versions() -> dict:
    import torch

    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return {
        "python": platform.python_version(),
        **found,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None,
    }


PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared_ranges(pyproject: Path = PYPROJECT) -> dict[str, tuple[str, str | None]]:
    """Distribution -> (its declared range, None for a runtime dependency or the extra that names it)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    groups = [(None, project["dependencies"])]
    groups += [(extra, needs) for extra, needs in project["optional-dependencies"].items() if extra != "dev"]
    ranges = {"python": (project["requires-python"], None)}
    for extra, requirements in groups:
        for requirement in requirements:
            name, specifier = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement).groups()
            ranges[name] = (specifier, extra)
    return ranges


def check_versions(ranges: dict[str, tuple[str, str | None]]) -> tuple[list[tuple[str, str, str, str]], bool]:
    """(name, found, range, verdict) per declared dependency, and whether every runtime one is there. A version
    outside its range is reported, not refused: the ranges are what was tested, and a newer cluster stack may work."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    rows, complete = [], True
    for name, (specifier, extra) in ranges.items():
        try:
            found = platform.python_version() if name == "python" else importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found = None
        if found is None:
            complete &= extra is not None
            verdict = "MISSING" if extra is None else f"not installed (only for the '{extra}' extra)"
        else:
            verdict = "ok" if Version(found) in SpecifierSet(specifier) else "outside the tested range"
        rows.append((name, found or "-", specifier, verdict))
    return rows, complete


def print_version_check() -> int:
    rows, complete = check_versions(declared_ranges())
    for name, found, specifier, verdict in rows:
        print(f"{name:<22}{found:<22}{specifier:<20}{verdict}")
    if not complete:
        missing = ", ".join(name for name, _, _, verdict in rows if verdict == "MISSING")
        print(
            f"error: {missing} not found by {sys.executable}; install a wheelhouse "
            "(python -m launcher.wheelhouse, docs/cluster.md) and put its folder on PYTHONPATH",
            file=sys.stderr,
        )
        return 2
    return 0


def make_data(folder: Path) -> None:
    from data.pack import pack
    from data.synthetic import generate
    from data.synthetic.caption_writer import CAPTION_FILES

    generate(folder / "synthetic", seed=0, train_images=TRAIN_IMAGES, test_identities=2, progress=False)
    raw = folder / "synthetic" / "luperson_mllm"
    pack(raw / "imgs", [raw / name for name in CAPTION_FILES], folder / "shards", images_per_shard=48)


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tests(path: Path) -> dict | None:
    try:
        suite = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return counts | {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]}


def _training(log: Path) -> dict | None:
    """Losses and steps logged by the training parts (metrics.jsonl of the run)."""
    if not log.is_file():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r and "step" in r]
    return {
        "last_step": steps[-1]["step"] if steps else None,
        "losses": [round(r["loss"], 4) for r in steps],
        "samples_per_s": [round(r["samples_per_s"], 1) for r in steps],
    }


def summary(out: Path, seconds: int) -> dict:
    parts = [json.loads(line) for line in (out / "parts.jsonl").read_text().splitlines()] if out.exists() else []
    step = _load(out / "step_benchmark.json")
    reference = _load(out / "reference_step.json")
    kernel = _load(out / "kernel_benchmark.json")
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": seconds,
        "parts": {p["part"]: p for p in parts},
        "nvidia_smi": (out / "nvidia_smi.csv").read_text() if (out / "nvidia_smi.csv").is_file() else None,
        "versions": _load(out / "versions.json"),
        "cuda_tests": _tests(out / "cuda_tests.xml"),
        "kernel_benchmark": kernel,
        "step_benchmark": step,
        "reference_step": reference,
        "training": _training(out / "train" / "metrics.jsonl"),
        "training_fp16_reference": _training(out / "train_fp16_reference" / "metrics.jsonl"),
    }
    if step and reference:
        ours = step["modes"]["nam"]["samples_per_s"]
        result["nam_step_over_reference_samples_per_s"] = ours / reference["samples_per_s"]
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    table = render(result)
    (out / "gpu_check.txt").write_text(table + "\n")
    print(table)
    return result


def render(result: dict) -> str:
    lines = [f"gpu_check, {result['date']}, {result['seconds']} s"]
    for name, part in result["parts"].items():
        status = "skipped" if part.get("skipped") else "ok" if part["rc"] == 0 else f"FAILED (exit {part['rc']})"
        lines.append(f"  {name:<18} {status:<18} {part['seconds']:>4} s")
    tests = result["cuda_tests"]
    if tests:
        lines.append(f"CUDA tests: {tests['passed']} passed, {tests['failures'] + tests['errors']} failed")
    step = result["step_benchmark"]
    if step:
        nam, em = step["modes"]["nam"], step["modes"]["em"]
        lines.append(
            f"step, batch {step['batch_size_per_rank']} {step['precision']}: NAM {nam['samples_per_s']:.0f} samples/s, "
            f"MFU {nam['mfu']:.1%}; EM {em['samples_per_s']:.0f} samples/s, MFU {em['mfu']:.1%} "
            f"(MFU: model FLOP/s over the {step.get('peak_tflops') or '?'} TFLOP/s dense bf16 peak; goal >= 45%); "
            f"NAM/EM step time {step['nam_over_em_step_time']:.3f} (goal <= 1.05); "
            f"{nam['flops_per_sample'] / 1e9:.1f} GFLOP/sample"
        )
    if result.get("nam_step_over_reference_samples_per_s"):
        reference = result["reference_step"]
        lines.append(
            f"reference step: {reference['samples_per_s']:.0f} samples/s ({reference['precision']}); "
            f"ours / reference samples/s on this GPU: {result['nam_step_over_reference_samples_per_s']:.2f}x (goal >= 3x)"
        )
    kernel = result["kernel_benchmark"]
    if kernel:
        for row in kernel["rows"]:
            share = f", {row['share_of_peak']:.0%} of the HBM peak (goal >= 70%)" if row.get("share_of_peak") else ""
            lines.append(
                f"kernel {row['dtype']} B={row['batch']}: {row['gbps']:.0f} GB/s{share}, "
                f"{row['einsum'] / row['triton']:.2f}x the speed of einsum+max (goal >= 3x)"
            )
    for key, what in (("training", "training (bf16)"), ("training_fp16_reference", "training in fp16_reference")):
        training = result.get(key)
        if training:
            lines.append(f"{what}: last step {training['last_step']}, losses {training['losses']}")
    return "\n".join(lines)


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check_report", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("versions")
    commands.add_parser("check-versions")
    data = commands.add_parser("data")
    data.add_argument("folder", type=Path)
    report = commands.add_parser("summary")
    report.add_argument("out", type=Path)
    report.add_argument("--seconds", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "versions":
        print(json.dumps(versions(), indent=2))
    elif args.command == "check-versions":
        return print_version_check()
    elif args.command == "data":
        make_data(args.folder)
    else:
        summary(args.out, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
