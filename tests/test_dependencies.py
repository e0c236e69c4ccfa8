"""Every third-party module the code imports is declared in pyproject.toml (directly, not only through the lock),
and the lock pins every declared dependency."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from tests.helpers import REPO

OURS = {"launcher", "benchmarks", "eval", "engine", "data", "kernels", "tests"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {normalise(re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0]) for requirement in requirements}


def imported_top_level_modules() -> dict[str, str]:
    """Top-level module -> one file that imports it, over every Python file of the repository."""
    found: dict[str, str] = {}
    for package in sorted(OURS):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return {m: where for m, where in found.items() if m not in OURS and m not in sys.stdlib_module_names}


# Modules of the extras (imported only where they are used): an environment without them, such as the floor's, is
# complete; an extra's module that is installed must still come from its declared distribution.
EXTRA_MODULES = {
    "wandb": ("wandb", "wandb"),
    "faiss": ("faiss", "faiss-cpu"),
    "boto3": ("s3", "boto3"),
    "moto": ("dev", "moto"),  # the tests' S3 server (benchmarks/s3_server.py imports it when it starts)
    "werkzeug": ("dev", "werkzeug"),
}


def extras() -> dict[str, set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {
        extra: {normalise(re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0]) for r in requirements}
        for extra, requirements in project["optional-dependencies"].items()
    }


def test_the_optional_modules_are_extras_not_runtime_dependencies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {normalise(re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0]) for r in project["dependencies"]}
    for module, (extra, distribution) in EXTRA_MODULES.items():
        assert distribution not in runtime and distribution in extras()[extra], module


def test_every_imported_module_is_declared() -> None:
    distributions = packages_distributions()
    wanted = declared()
    missing = []
    for module, where in sorted(imported_top_level_modules().items()):
        providers = {normalise(d) for d in distributions.get(module, [])}
        if not providers and module in EXTRA_MODULES:
            continue
        if not providers:
            missing.append(f"{module} (imported by {where}) is not installed")
        elif not providers & wanted:
            missing.append(f"{module} (imported by {where}) comes from {sorted(providers)}, not declared in pyproject")
    assert not missing, "\n".join(missing)


def test_the_lock_pins_every_declared_dependency() -> None:
    pinned = {
        normalise(line.split("==")[0])
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert declared() <= pinned, sorted(declared() - pinned)
