"""The layering rule, checked on every module's imports (module level and inside functions alike):

    launcher, benchmarks  ->  eval  ->  engine  ->  data, kernels

A package may import itself and anything below it, never above; `data` and `kernels` import nothing of ours
outside themselves. Inside engine/, the pure model (engine/model/) imports no engine.method or engine.runtime module
and neither deepspeed nor torch.distributed; the method (engine/method/) imports neither deepspeed nor
torch.distributed and reaches other ranks only through engine/runtime/collectives.py. Tests are clients: no other
package imports them. No two modules import each other, directly or through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("launcher", "benchmarks", "eval", "engine", "data", "kernels", "tests")
ALLOWED = {  # package -> the packages of ours it may import (itself included)
    "kernels": {"kernels"},
    "data": {"data"},
    "engine": {"engine", "data", "kernels"},
    "eval": {"eval", "engine", "data", "kernels"},
    "launcher": {"launcher", "eval", "engine", "data", "kernels"},
    "benchmarks": {"benchmarks", "launcher", "eval", "engine", "data", "kernels"},
    "tests": set(PACKAGES),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def all_imports(path: Path) -> set[str]:
    """Every module name `path` imports, ours or not, at any depth of the file (`from a import b` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imported_modules(path: Path, known: dict[str, Path]) -> set[str]:
    """Our modules that `path` imports, resolved to module names (`from a.b import c` is a.b.c when c is a module)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in names if name.split(".")[0] in PACKAGES and name != this}


GRAPH = {name: imported_modules(path, modules()) for name, path in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module: str) -> None:
    package = module.split(".")[0]
    upward = sorted(name for name in GRAPH[module] if name.split(".")[0] not in ALLOWED[package])
    assert not upward, f"{module} ({package}) imports {upward}; {package} may import only {sorted(ALLOWED[package])}"


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over our modules: every component must be a single module."""
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in GRAPH:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert not cycles, f"modules that import each other: {cycles}"


def test_no_test_module_imports_another() -> None:
    offenders = {
        module: sorted(name for name in GRAPH[module] if name.startswith("tests.test_"))
        for module in GRAPH
        if module.startswith("tests.")
    }
    assert not {m: names for m, names in offenders.items() if names}


# Inside engine: module prefix -> the module prefixes of ours and outside packages it must not import.
ENGINE_RULES = {
    "engine.model": ("engine.method", "engine.runtime", "deepspeed", "torch.distributed"),
    "engine.method": ("deepspeed", "torch.distributed"),
}
METHOD_SEAM = "engine.runtime.collectives"  # the one runtime module the method may import


def starts_with(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize(
    "module", sorted(m for m in GRAPH if starts_with(m, "engine.model") or starts_with(m, "engine.method"))
)
def test_model_and_method_stay_off_the_runtime(module: str) -> None:
    prefix = next(p for p in ENGINE_RULES if starts_with(module, p))
    imported = all_imports(modules()[module]) | GRAPH[module]
    forbidden = sorted(name for name in imported if any(starts_with(name, f) for f in ENGINE_RULES[prefix]))
    assert not forbidden, f"{module} imports {forbidden}; {prefix} may import none of {list(ENGINE_RULES[prefix])}"
    if prefix == "engine.method":
        runtime = sorted(n for n in GRAPH[module] if starts_with(n, "engine.runtime") and n != METHOD_SEAM)
        assert not runtime, f"{module} imports {runtime}; the method reaches the runtime only through {METHOD_SEAM}"


def test_only_tests_import_tests() -> None:
    importers = sorted(
        m for m in GRAPH if not starts_with(m, "tests") and any(starts_with(n, "tests") for n in GRAPH[m])
    )
    assert not importers, f"{importers} import the tests package; share the code from a non-test module instead"
