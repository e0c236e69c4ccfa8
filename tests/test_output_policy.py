"""Every command-line tool, found by walking the source tree (a new tool cannot be left out): its `main` is wrapped
in the error boundary, and every output flag of its parser is declared through data.outputs and refuses, before
any work, to write onto an existing file, a non-empty folder it did not write, its own input, or into a missing
folder. Each refusal is exit status 2, no traceback, and a last line naming the flag; what must survive is hashed."""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from tests.helpers import REPO, assert_refused, build_cli_inputs, caption_files, digest, run

PACKAGES = ("data", "engine", "eval", "launcher", "benchmarks", "kernels")
MAIN_GUARD = 'if __name__ == "__main__"'
# Value-taking arguments named like an output must be declared with data.outputs.output_argument ...
OUTPUT_LIKE = re.compile(r"^(out|output|html|json|run_dir|save_\w+|\w+_out|\w+_output)$")
# ... unless they are inputs: (module of main, dest) -> why.
INPUTS_NAMED_LIKE_OUTPUTS = {
    ("eval.plot", "run_dir"): "the run folder whose metrics.jsonl it reads",
    ("benchmarks.gpu_check_report", "out"): "the folder gpu_check.sh made new; summary reads the parts there",
}


def entry_modules() -> list[str]:
    """Every `__main__.py` and every module with a main guard, as dotted names."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "__main__.py" or MAIN_GUARD in path.read_text(encoding="utf-8"):
                found.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return found


def entry_points() -> dict[str, Callable]:
    """Every CLI's main, keyed by the module that defines it (`python -m data.synthetic` is data.synthetic.cli's),
    plus the tools `python -m eval COMMAND` dispatches to."""
    from eval.__main__ import COMMANDS

    modules = entry_modules() + [module for module, _ in COMMANDS.values()]
    mains = {}
    for name in modules:
        main = importlib.import_module(name).main
        mains.setdefault(main.__module__, main)
    return mains


class _Parsed(BaseException):  # not an Exception: the error boundary lets it through
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def parser_of(main: Callable) -> argparse.ArgumentParser:
    """The parser `main` builds, caught as it starts to parse (nothing after parsing runs)."""

    def capture(parser, *args, **kwargs):
        raise _Parsed(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture):
        try:
            main([])
        except _Parsed as parsed:
            return parsed.parser
    raise AssertionError(f"{main.__module__}.main returned without parsing its arguments")


def actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's actions and those of its subcommands."""
    found = []
    for action in parser._actions:
        found.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                found += actions(subparser)
    return found


ENTRY_POINTS = entry_points()
PARSERS = {module: parser_of(main) for module, main in ENTRY_POINTS.items()}


def output_flags() -> list[tuple[str, argparse.Action]]:
    return [(module, a) for module, parser in PARSERS.items() for a in actions(parser) if hasattr(a, "output_kind")]


# ---------------------------------------------------------------- every entry point


def test_every_entry_point_is_found():
    assert {"data.pack", "data.synthetic.cli", "eval.run", "eval.search.gallery_index", "launcher.ablation"} <= set(
        ENTRY_POINTS
    )
    assert len(ENTRY_POINTS) >= 30


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_entry_point_is_in_the_error_boundary(module):
    assert getattr(ENTRY_POINTS[module], "error_boundary", False), f"{module}.main is not wrapped in error_boundary"


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_output_like_argument_is_declared(module):
    undeclared = [
        action.option_strings[0] if action.option_strings else action.dest
        for action in actions(PARSERS[module])
        if action.nargs != 0
        and OUTPUT_LIKE.match(action.dest)
        and not hasattr(action, "output_kind")
        and (module, action.dest) not in INPUTS_NAMED_LIKE_OUTPUTS
    ]
    assert not undeclared, f"{module}: declare {undeclared} with data.outputs.output_argument"


# ---------------------------------------------------------------- every output flag, four ways


@dataclass
class Command:
    argv: list[object]  # everything but the output flag: enough to reach the output checks
    input: Path | None = None  # a file the command reads, tried for file outputs; None: it reads none
    input_folder: Path | None = None  # a folder it reads, tried for folder outputs
    suffix: str = ".json"  # of a file output


def commands(world: dict[str, Path]) -> dict[str, Command]:
    raw, export = world["raw"], world["export"]
    model_file = export / "model.safetensors"
    evaluation = ["--checkpoint", export, "--dataset", "cuhk-pedes", "--root", world["cuhk"]]
    return {
        "data.captioning.cli": Command(
            ["--images", raw / "imgs", "--model", world["root"] / "no-model", "--mode", "static"],
            input=raw / "imgs" / "00000.jpg",
        ),
        "data.captioning.tiny_model": Command([]),
        # --out s3://... makes --stage the output; the store is asked only after --stage passed (none runs here).
        "data.pack": Command(
            ["--images", raw / "imgs", "--captions", *caption_files(raw), "--out", "s3://no-store/shards"],
            input_folder=raw / "imgs",
        ),
        "data.pack_dataset": Command(
            ["--dataset", "cuhk-pedes", "--root", world["cuhk"], "--out", "s3://no-store/shards"],
            input_folder=world["cuhk"],
        ),
        "data.synthetic.cli": Command([]),
        "data.synthetic.targets": Command([]),
        "data.synthetic.web": Command([]),
        "eval.openai_format": Command(["--model", export], input=model_file, input_folder=export),
        "eval.run": Command(evaluation, input=model_file, input_folder=export),
        "eval.export": Command(["--checkpoint", export], input_folder=export),
        "eval.search.gallery_index": Command(["--checkpoint", export, "--images", raw / "imgs"], input=model_file),
        "eval.analysis.noise_auroc": Command(["--checkpoint", export, "--data", raw], input=caption_files(raw)[0]),
        "eval.plot": Command([world["run"]], suffix=".png"),  # it reads no .png
        "launcher.ablation": Command(["--rows", "nosuchrow"]),
        "launcher.wheelhouse": Command([]),  # reads only the lock
        "benchmarks.benchmark_batch_composition": Command(
            ["--shards", world["shards"], "--world-size", 1, "--workers", 0, "--batch-size", 4],
            input=world["shards"] / "manifest.json",
        ),
        "benchmarks.benchmark_token_patch_max_cosine": Command([]),
        "benchmarks.benchmark_train_step": Command(["--config", world["config"]], input=world["config"]),
        "benchmarks.reference_step": Command([]),
    }


def test_every_command_with_outputs_is_tried(world):
    assert {module for module, _ in output_flags()} == set(commands(world))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return build_cli_inputs(tmp_path_factory.mktemp("output_policy"))


@pytest.fixture(autouse=True)
def no_exit_sweep(monkeypatch):
    monkeypatch.setattr("launcher.train.end_data_workers", lambda: None)


OUTPUTS = output_flags()
IDS = [f"{module}:{action.option_strings[0] if action.option_strings else action.dest}" for module, action in OUTPUTS]
# What each kind's refusal says, case by case (a tool that resumes its own file says it was not written by it).
REFUSALS = {
    "file": {
        "file": "already exists|exists and",
        "folder": "is a folder",
        "input": "input",
        "missing": "does not exist",
    },
    "folder": {"file": "is an existing file", "folder": "not empty", "input": "input", "missing": "does not exist"},
    "subfolders": {"file": "is an existing file", "folder": "not empty", "missing": "does not exist"},
}


def assert_says(line: str, action: argparse.Action, case: str) -> None:
    assert re.search(REFUSALS[action.output_kind][case], line), f"{case}: {line!r}"


def try_output(world, module: str, action: argparse.Action, target: Path, *extra: object) -> tuple[int, str]:
    flag = action.option_strings[0]
    return run(ENTRY_POINTS[module], [*commands(world)[module].argv, flag, target, *extra])


def name_suffix(world, module: str, action: argparse.Action) -> str:
    return commands(world)[module].suffix if action.output_kind == "file" else ""


def has_overwrite(module: str) -> bool:
    return any("--overwrite" in action.option_strings for action in actions(PARSERS[module]))


@pytest.mark.parametrize(("module", "action"), OUTPUTS, ids=IDS)
def test_output_onto_an_existing_file(world, tmp_path, module, action):
    target = tmp_path / ("earlier" + name_suffix(world, module, action))
    target.write_text("earlier results")
    before = digest(target)
    assert_says(assert_refused(try_output(world, module, action, target), action.option_strings[0]), action, "file")
    assert digest(target) == before


@pytest.mark.parametrize(("module", "action"), OUTPUTS, ids=IDS)
def test_output_onto_a_folder_the_command_did_not_write(world, tmp_path, module, action):
    target = tmp_path / ("mine" + name_suffix(world, module, action))
    folder = target
    if action.output_kind == "subfolders":  # other files beside its sub-folders are fine; a sub-folder of ours is not
        folder = target / action.output_subfolders[0]
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    before = digest(target)
    # A folder for a file output is refused even with --overwrite; a folder output replaces one only with it.
    extra = ["--overwrite"] if action.output_kind == "file" and has_overwrite(module) else []
    line = assert_refused(try_output(world, module, action, target, *extra), action.option_strings[0])
    assert_says(line, action, "folder")
    assert digest(target) == before


@pytest.mark.parametrize(("module", "action"), OUTPUTS, ids=IDS)
def test_output_onto_the_commands_own_input(world, module, action):
    command = commands(world)[module]
    source = command.input if action.output_kind == "file" else command.input_folder
    if source is None:
        pytest.skip(f"{module} reads no {'file' if action.output_kind == 'file' else 'folder'} of its own")
    before = digest(source)
    extra = ["--overwrite"] if has_overwrite(module) else []  # the input is refused even with --overwrite
    line = assert_refused(try_output(world, module, action, source, *extra), action.option_strings[0])
    assert_says(line, action, "input")
    assert digest(source) == before


@pytest.mark.parametrize(("module", "action"), OUTPUTS, ids=IDS)
def test_output_in_a_missing_folder(world, tmp_path, module, action):
    target = tmp_path / "absent" / ("out" + name_suffix(world, module, action))
    line = assert_refused(try_output(world, module, action, target), action.option_strings[0])
    assert_says(line, action, "missing")
    assert not (tmp_path / "absent").exists()


# ---------------------------------------------------------------- training's output: the config key train.run_dir


def train(world, run_dir: Path, *extra: object) -> tuple[int, str]:
    return run(ENTRY_POINTS["launcher.train"], ["--config", world["config"], f"train.run_dir={run_dir}", *extra])


def test_train_run_dir_is_an_existing_file(world, tmp_path):
    (tmp_path / "notes").write_text("mine")
    before = digest(tmp_path / "notes")
    assert_refused(train(world, tmp_path / "notes"), "train.run_dir", "is an existing file")
    assert digest(tmp_path / "notes") == before


@pytest.mark.parametrize("owner", [None, "python -m data.pack"])
def test_train_run_dir_holds_what_training_did_not_write(world, tmp_path, owner):
    from data.outputs import claim_folder

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("my own settings")  # training would replace it
    if owner:
        claim_folder(folder, owner)
    before = digest(folder)
    line = assert_refused(train(world, folder), "train.run_dir", "--overwrite")
    assert ("config.yaml" if owner is None else owner) in line
    assert digest(folder) == before


@pytest.mark.parametrize("where", ["shards", "inside", "holding"])
def test_train_run_dir_overlaps_its_shards(world, tmp_path, where):
    shards = tmp_path / "data" / "shards"
    shutil.copytree(world["shards"], shards)
    run_dir = {"shards": shards, "inside": shards / "run", "holding": tmp_path / "data"}[where]
    before = digest(tmp_path / "data")
    line = assert_refused(train(world, run_dir, f"data.shards={shards}", "--overwrite"), "train.run_dir")
    assert "data.shards" in line
    assert digest(tmp_path / "data") == before


def test_the_output_policy_knows_the_files_that_make_a_checkpoint(tmp_path: Path):
    """data/outputs.py sits below the engine and cannot import the checkpoint's file names, so it repeats them: a
    checkpoint or run folder as training writes it must still be recognised as one (never an output target)."""
    from data.outputs import holds_checkpoint
    from engine.runtime.checkpoint import LATEST, MODEL_CONFIG_FILE, TRAIN_STATE_FILE
    from engine.runtime.run_folder import CHECKPOINTS

    for marker in (LATEST, MODEL_CONFIG_FILE, TRAIN_STATE_FILE, CHECKPOINTS):
        folder = tmp_path / f"holding-{marker}"
        folder.mkdir()
        (folder / marker).touch()
        assert holds_checkpoint(folder) == marker
