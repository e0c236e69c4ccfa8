"""Wheels of every runtime dependency that a PyTorch image lacks, for an offline install onto that image.

    python -m launcher.wheelhouse --out wheelhouse [--python-version 3.12] [--with transformers wandb faiss]

A GPU container (NGC-style) or a cluster's module brings its own Python, torch, triton, numpy and NVIDIA libraries,
and often no registry access. This collects, at the lock's versions (requirements.txt), the wheels of what such an
image usually lacks: DeepSpeed (built here into a pure-Python wheel), webdataset, mosaicml-streaming with the
compression libraries it imports, the CLIP tokenizer's vocabulary (open_clip_torch, ftfy) and DeepSpeed's own
needs (hjson, pydantic). It never collects torch, triton, numpy or the NVIDIA libraries: the image's own are used.
On the target machine, from the repository root:

    python3 -m pip install --no-index --no-deps --target SITE wheelhouse/*.whl
    export PYTHONPATH=$PWD/SITE
    python3 -m benchmarks.gpu_check_report versions   # the versions found against the declared ranges

docs/cluster.md ("Running on a cluster's own PyTorch") has the whole walk-through.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

from data.cli_errors import error_boundary
from data.outputs import atomic_folder, check_output_folder, output_argument

TOOL = "python -m launcher.wheelhouse"
LOCK = Path(__file__).resolve().parents[1] / "requirements.txt"

# What a PyTorch image lacks and the code imports at run time (distribution names as the lock spells them).
IMAGE_LACKS = (
    "deepspeed",
    "hjson",  # DeepSpeed's config reader
    "pydantic",  # DeepSpeed's config models, with the three below
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "webdataset",
    "braceexpand",  # webdataset's shard patterns
    "mosaicml-streaming",
    "catalogue",  # streaming's registries
    "brotli",  # streaming imports its compressors when it is imported
    "python-snappy",
    "cramjam",
    "zstd",
    "xxhash",
    "open-clip-torch",  # the CLIP BPE vocabulary and its text cleaning
    "ftfy",
    "wcwidth",
)
# Asked for by name: what only some users need, or what most PyTorch images already have.
OPTIONAL = {
    "transformers": ("transformers", "tokenizers"),  # eval export and captioning only
    "wandb": (  # wandb and what it needs beyond the image and the default set
        "wandb",
        "cwevals",
        "distro",
        "googleapis-common-protos",
        "opentelemetry-api",
        "opentelemetry-sdk",
        "opentelemetry-exporter-http-transport",
        "opentelemetry-exporter-otlp-common",
        "opentelemetry-exporter-otlp-proto-common",
        "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry-proto",
        "opentelemetry-semantic-conventions",
        "platformdirs",
        "sniffio",
    ),  # fmt: skip
    "faiss": ("faiss-cpu",),  # eval search --approximate
    "s3": ("boto3", "botocore", "s3transfer", "jmespath"),  # shards in s3:// (the image has urllib3 and dateutil)
}
BUILT_HERE = ("deepspeed",)  # published as a source archive only: built into a py3-none-any wheel with our torch
MACHINES = ("x86_64", "aarch64")
OLDEST_GLIBC, NEWEST_GLIBC = 5, 39  # pip matches a manylinux tag exactly, so each glibc in between is named


def platform_tags(machine: str) -> list[str]:
    """Every manylinux tag a wheel for `machine` may carry, newest glibc first."""
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(NEWEST_GLIBC, OLDEST_GLIBC - 1, -1)]
    return tags + [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]


class WheelhouseError(RuntimeError):
    """A package the wheelhouse needs cannot be had; the message names it."""


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """name -> pinned version, from the lock's `name==version` lines."""
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split(";")[0].strip().split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def wanted(extras: list[str], pins: dict[str, str]) -> list[str]:
    """The `name==version` requirements of the wheelhouse, at the lock's versions."""
    names = list(IMAGE_LACKS) + [name for extra in extras for name in OPTIONAL[extra]]
    missing = [name for name in names if name not in pins]
    if missing:
        raise WheelhouseError(f"{LOCK.name} pins no version of {', '.join(missing)}; run make lock")
    return [f"{name}=={pins[name]}" for name in dict.fromkeys(names)]


def _pip(*arguments: str, what: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *arguments], capture_output=True, text=True)
    if result.returncode:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")] or ["pip failed"]
        raise WheelhouseError(f"{what}: {errors[-1]}")


def collect(folder: Path, requirements: list[str], *, python_version: str, machine: str) -> None:
    """Downloads the binary wheels for the target Python and platform, and builds the source-only ones here."""
    built = [r for r in requirements if r.split("==")[0] in BUILT_HERE]
    downloaded = [r for r in requirements if r not in built]
    tags = [argument for tag in platform_tags(machine) for argument in ("--platform", tag)]
    _pip(
        "download", "--quiet", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
        "--python-version", python_version, *tags, "--dest", str(folder), *downloaded,
        what=f"downloading wheels for Python {python_version} ({machine})",
    )  # fmt: skip
    for requirement in built:  # with this interpreter's torch: DeepSpeed's build reads it, and compiles no op
        _pip(
            "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(folder), requirement,
            what=f"building {requirement}",
        )  # fmt: skip
    non_universal = [
        w.name for w in folder.glob("*.whl") if w.name.split("==")[0] in built and "none-any" not in w.name
    ]
    if non_universal:
        raise WheelhouseError(f"{non_universal[0]} is not a pure-Python wheel; it would not install on another Python")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=TOOL, description=__doc__.splitlines()[0])
    output_argument(parser, "--out", kind="folder", required=True, help="the folder of wheels to write")
    parser.add_argument(
        "--python-version",
        default=platform.python_version_tuple()[0] + "." + platform.python_version_tuple()[1],
        help="the target's Python, e.g. 3.12 (default: this interpreter's)",
    )
    parser.add_argument("--machine", choices=MACHINES, default="x86_64", help="the target's processor")
    parser.add_argument("--with", dest="extras", nargs="+", choices=sorted(OPTIONAL), default=[], help="add these")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing wheelhouse")
    args = parser.parse_args(argv)
    major, _, minor = args.python_version.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        parser.error(f"--python-version must look like 3.12 (got {args.python_version!r})")
    return args


@error_boundary
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_output_folder(args.out, flag="--out", overwrite=args.overwrite, tool=TOOL)
    requirements = wanted(args.extras, locked_versions())
    print(f"collecting {len(requirements)} wheels for Python {args.python_version} ({args.machine}) ...", flush=True)
    with atomic_folder(args.out, tool=TOOL) as folder:
        collect(folder, requirements, python_version=args.python_version, machine=args.machine)
    wheels = sorted(Path(args.out).glob("*.whl"))
    total = sum(wheel.stat().st_size for wheel in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:8.2f} MB  {wheel.name}")
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MB in {args.out}")
    print(f"install offline: python3 -m pip install --no-index --no-deps --target SITE {args.out}/*.whl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
