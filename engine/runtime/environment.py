"""What a floating-point result depends on besides the code, the config and the seed: the CPU, the library builds
and the thread count. One seed gives one result on one machine with the same libraries and thread count; on another
CPU or another build the reductions round differently. Training writes this beside config.yaml (environment.json),
and the eval and ablation results carry it, so that two results can be compared knowing what differed.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import torch

ENVIRONMENT_FILE = "environment.json"  # in a run folder, beside config.yaml
LIBRARIES = ("torch", "numpy", "deepspeed", "transformers")  # those whose kernels or defaults shape the numbers


def cpu_model() -> str:
    """The CPU's model name as Linux reports it (/proc/cpuinfo), else platform.processor(), else 'unknown'."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_environment() -> dict:
    """{cpu, cpu_count, platform, python, torch_threads, <library>: version} for the libraries installed; no host
    name or user name."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)  # read from the install, without importing it
        except importlib.metadata.PackageNotFoundError:
            continue
    versions["torch"] = torch.__version__  # with its build tag (e.g. +cpu, +cu130): builds differ in kernels
    return {
        "cpu": cpu_model(),
        "cpu_count": torch.multiprocessing.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        **versions,
    }
