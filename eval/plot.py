"""Training curves from a run's metrics.jsonl: loss, learning rate, throughput and eval R1/mAP in one PNG.

python -m eval.plot RUN_DIR [--out RUN_DIR/curves.png]

Resumed runs append to the same file, so a step can appear twice (the steps after the last checkpoint
are trained again); the later record wins.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.cli_errors import error_boundary
from data.outputs import atomic_file, check_output_file, output_argument

NUMERIC_FIELDS = ("step", "epoch", "loss", "lr", "samples_per_s", "R1", "mAP")


class PlotError(ValueError):
    """A run folder without usable metrics; the message names it."""


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"no metrics.jsonl in {run_dir} (expected a run folder written by python -m launcher.train)")
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the last line of a run killed mid-write
                break
            raise PlotError(f"{path}:{number} is not a JSON object") from None
        if not isinstance(record, dict):
            raise PlotError(f"{path}:{number} is JSON but not a record (a {type(record).__name__}, not an object)")
        for key in NUMERIC_FIELDS:
            value = record.get(key)
            if key in record and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise PlotError(f"{path}:{number}: {key} is not a number ({value!r})")
        for key in ("eval", "split"):
            if key in record and not isinstance(record[key], str):
                raise PlotError(f"{path}:{number}: {key} is not a string ({record[key]!r})")
        records.append(record)
    return records


def training_curves(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{"loss" | "lr" | "samples_per_s": [(step, value)]} in step order, the last record of a step winning."""
    curves = {}
    for name in ("loss", "lr", "samples_per_s"):
        by_step = {r["step"]: float(r[name]) for r in records if "step" in r and name in r}
        curves[name] = sorted(by_step.items())
    return curves


def eval_curves(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{"<benchmark> <split> R1" | "... mAP": [(epochs done, value)]}."""
    curves: dict[str, dict[int, float]] = {}
    for record in (r for r in records if "eval" in r):
        for metric in ("R1", "mAP"):
            if metric in record:
                key = f"{record['eval']} {record['split']} {metric}"
                curves.setdefault(key, {})[record["epoch"] + 1] = float(record[metric])
    return {key: sorted(points.items()) for key, points in curves.items()}


def plot_run(run_dir: Path, out: Path) -> Path:
    records = read_metrics(run_dir)
    train, evals = training_curves(records), eval_curves(records)
    if not train["loss"]:
        raise PlotError(f"{run_dir / 'metrics.jsonl'} has no training records yet (no line with step and loss)")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = [("loss", "loss"), ("lr", "learning rate"), ("samples_per_s", "samples/s (all ranks)")]
    for axis, (name, label) in zip(axes.flat[:3], panels, strict=True):
        steps, values = zip(*train[name], strict=True) if train[name] else ((), ())
        axis.plot(steps, values)
        axis.set(xlabel="optimizer step", ylabel=label, title=label)
        axis.grid(alpha=0.3)
    axis = axes.flat[3]
    for key, points in evals.items():
        epochs, values = zip(*points, strict=True)
        axis.plot(epochs, values, marker="o", label=key)
    axis.set(xlabel="epochs done", ylabel="%", title="eval" if evals else "eval (none in this run)")
    if evals:
        axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.suptitle(str(run_dir))
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as partial:
        figure.savefig(partial, dpi=100, format="png")
    plt.close(figure)
    return out


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (train.run_dir) holding metrics.jsonl")
    output_argument(parser, "--out", kind="file", help="the PNG to write (default RUN_DIR/curves.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    try:  # PlotError is caught here: run as `python -m eval.plot`, its module is __main__, not ours to the boundary
        read_metrics(args.run_dir)  # the input first: a folder that is no run is named as such
        out = args.out or args.run_dir / "curves.png"
        if out.suffix.lower() != ".png":
            raise PlotError(f"--out {out} must name a .png file")
        check_output_file(out, flag="--out", overwrite=args.overwrite, protect=[args.run_dir / "metrics.jsonl"])
        out = plot_run(args.run_dir, out)
    except PlotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
