"""The paper's Table 1 and Table 2 in miniature, from a synthetic stand-in for web-pretrained CLIP, as one command.

    python -m launcher.ablation --out ablation_runs [--jobs 2] [--seeds 3] [--rows ROW,ROW] [--set section.key=value ...]

Stages, each skipped when its output exists (a stopped run continues where it stopped; nothing is overwritten):
1. world: the LUPerson-MLLM-like set at 0%, 15% and 30% wrong words (one seed: same people, images and
   phrasing, only the wrong words differ), the web corpus, and the three target sets (data/synthetic);
2. shards for each (noise rate, caption set) a row needs (data.pack);
3. the stand-in CLIP: configs/synthetic_clip.yaml on the web corpus, saved in OpenAI's layout (engine/openai_format);
4. its noise AUROC on the 15% set's wrong words at every layer; the best layer becomes NAM's tap layer;
5. every row x seed: one training process (configs/ablation.yaml) and the final model's R1 / mAP on the test
   split of each target set; the NAM rows also get the noise AUROC after every epoch and the mean masking
   probability of wrong and of correct words in epoch 2 (read from the noise table that drove it);
6. OUT/ablation.md (mean +- std over seeds, every seed listed), OUT/ablation.png, OUT/ablation.json.

`--reduced` is the slow test tier's version: a tiny world and model, one seed, one epoch, two rows.
Exit status 0, or 2 with one line naming what failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from data.cli_errors import error_boundary, positive_int
from data.outputs import check_output_folder, claim_folder, folder_owner, output_argument

REPO = Path(__file__).resolve().parents[1]
ABLATION_CONFIG = REPO / "configs" / "ablation.yaml"
CLIP_CONFIG = REPO / "configs" / "synthetic_clip.yaml"
TARGETS = {"cuhk-pedes": "cuhk_pedes", "icfg-pedes": "icfg_pedes", "rstpreid": "rstpreid"}
STATIC_FILES = ("Ts-qwen.json", "Ts-shikra.json")
ALL_FILES = (*STATIC_FILES, "Td-qwen.json", "Td-shikra.json")


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    shows: str
    noise: int  # % wrong words in the pretraining captions
    captions: str = "all"  # static | all (static + dynamic)
    overrides: tuple[str, ...] = ()
    trains: bool = True


ROWS: tuple[Row, ...] = (
    Row("clip", "stand-in CLIP, no training", "the paper's CLIP row", 15, trains=False),
    Row("static_em", "static captions, EM", "paper Table 1, row 1", 15, "static", ("nam.masking=em",)),
    Row("tde_em", "static + dynamic (TDE), EM", "TDE's effect (EM at 15%)", 15, "all", ("nam.masking=em",)),
    Row("tde_nam", "static + dynamic, NAM", "NAM's effect (NAM at 15%)", 15, "all", ("nam.masking=nam",)),
    Row(
        "tde_nam_mlm",
        "static + dynamic, NAM + MLM loss",
        "paper Table 2",
        15,
        "all",
        ("nam.masking=nam", "loss.mlm_weight=1.0", "loss.mlm_shared_caption=false"),
    ),
    Row("em_00", "EM, 0% wrong words", "NAM vs EM without noise", 0, "all", ("nam.masking=em",)),
    Row("nam_00", "NAM, 0% wrong words", "NAM vs EM without noise", 0, "all", ("nam.masking=nam",)),
    Row("em_30", "EM, 30% wrong words", "NAM vs EM with more noise", 30, "all", ("nam.masking=em",)),
    Row("nam_30", "NAM, 30% wrong words", "NAM vs EM with more noise", 30, "all", ("nam.masking=nam",)),
    Row("oracle_15", "NAM, oracle noise, 15%", "the ceiling at 15%", 15, "all", ("nam.masking=nam", "ORACLE")),
    Row("oracle_30", "NAM, oracle noise, 30%", "the ceiling at 30%", 30, "all", ("nam.masking=nam", "ORACLE")),
)
ROWS_BY_NAME = {row.name: row for row in ROWS}
REDUCED_ROWS = ("clip", "tde_nam")
TOOL = "python -m launcher.ablation"


@dataclass
class WorldSize:
    """What one ablation costs; docs/ablation.md states the reasons and the measured wall time."""

    pretrain_images: int = 600
    web_images: int = 2000
    test_identities: int = 100
    images_per_test_identity: int = 2
    seeds: int = 3
    sweep_captions: int = 2000
    extra: list[str] = field(default_factory=list)  # overrides for the stand-in and every run (model size...)


REDUCED = WorldSize(
    pretrain_images=48,
    web_images=64,
    test_identities=8,
    images_per_test_identity=2,
    seeds=1,
    sweep_captions=64,
    extra=[
        "model.image_size=[64,32]",
        "model.vision_width=64",
        "model.vision_layers=2",
        "model.vision_heads=2",
        "model.text_width=64",
        "model.text_layers=2",
        "model.text_heads=2",
        "model.embed_dim=64",
        "train.epochs=1",
        "train.batch_size=8",
        "data.shuffle_buffer=64",
        "nam.tap_layer=1",
    ],
)


class AblationError(RuntimeError):
    """A stage that failed; the message is one line naming it."""


def _python(*args: str, log: Path, threads: int = 1) -> None:
    """One subprocess of this repository's entry points, its output in `log`; pinned threads for reproducibility."""
    env = os.environ | {"PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        code = subprocess.run(
            [sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    if code:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise AblationError(f"{' '.join(args[:2])} failed with status {code} (log {log}): {tail[0][:200]}")


def _noise_dir(out: Path, noise: int) -> Path:
    return out / "world" / f"noise{noise:02d}"


def build_world(out: Path, size: WorldSize, noises: set[int]) -> None:
    from data.synthetic import generate
    from data.synthetic.targets import write_targets
    from data.synthetic.web import write_web_set

    (out / "world").mkdir(parents=True, exist_ok=True)  # the generators write into existing folders only
    for noise in sorted(noises):
        if not (_noise_dir(out, noise) / "luperson_mllm" / "noise_words.jsonl").is_file():
            generate(
                _noise_dir(out, noise),
                seed=0,
                train_images=size.pretrain_images,
                test_identities=2,
                images_per_test_identity=1,
                split_identities=1,
                noise_fraction=noise / 100,
                overwrite=True,
                progress=False,
            )
    targets = out / "world" / "targets"
    if not (targets / "rstpreid" / "data_captions.json").is_file():
        write_targets(
            targets,
            seed=0,
            test_identities=size.test_identities,
            images_per_identity=size.images_per_test_identity,
            overwrite=True,
        )
    web = out / "world" / "web"
    if not (web / "web-b.json").is_file():
        if web.exists():
            import shutil

            shutil.rmtree(web)
        write_web_set(web, seed=0, count=size.web_images, size=(128, 64), on_image=lambda: None)


def shards_for(out: Path, noise: int, captions: str) -> Path:
    from data.pack import pack

    folder = out / "shards" / f"noise{noise:02d}_{captions}"
    if not (folder / "manifest.json").is_file():
        raw = _noise_dir(out, noise) / "luperson_mllm"
        files = STATIC_FILES if captions == "static" else ALL_FILES
        pack(raw / "imgs", [raw / name for name in files], folder, images_per_shard=200)
    return folder


def stand_in_clip(out: Path, size: WorldSize) -> Path:
    from data.pack import pack

    clip = out / "stand_in" / "clip.pt"
    if clip.is_file():
        return clip
    web = out / "world" / "web"
    shards = out / "shards" / "web"
    if not (shards / "manifest.json").is_file():
        pack(web / "imgs", [web / "web-a.json", web / "web-b.json"], shards, images_per_shard=250)
    run_dir = out / "stand_in" / "run"
    args = ["-m", "launcher.train", "--config", str(CLIP_CONFIG), f"data.shards={shards}", f"train.run_dir={run_dir}"]
    extra = [item for item in size.extra if not item.startswith("nam.tap_layer")]
    if any(item.startswith("model.vision_layers") for item in extra):  # the token-wise loss trains the last layer
        depth = next(item for item in extra if item.startswith("model.vision_layers")).split("=")[1]
        extra.append(f"nam.tap_layer={depth}")
    _python(*args, *extra, log=out / "stand_in" / "train.log")
    _python(
        "-m",
        "eval.openai_format",
        "--model",
        str(run_dir / "final"),
        "--out",
        str(clip),
        log=out / "stand_in" / "export.log",
    )
    return clip


def _load_model(path: Path, tap_layer: int | None = None):
    """An exported model folder, or the OpenAI-format stand-in through model.pretrained."""
    from engine.runtime.checkpoint import load_exported_model

    model, _ = load_exported_model(path)
    if tap_layer is not None:
        model.tap_layer = tap_layer
    return model


def _stand_in_model(clip: Path, size: WorldSize, tap_layer: int):
    from engine.config import load_config
    from engine.model import build_model

    config = load_config(ABLATION_CONFIG, [*size.extra, f"model.pretrained={clip}", f"nam.tap_layer={tap_layer}"])
    return build_model(config.model, tap_layer=config.nam.tap_layer)


def noise_auroc(model, raw_dir: Path, max_captions: int) -> dict:
    import torch

    from eval.analysis.noise_auroc import score_words, select_captions, summarise_group

    captions, _ = select_captions(raw_dir, max_captions)
    torch.set_num_threads(1)
    words, _ = score_words(model, captions, image_dir=raw_dir / "imgs", batch_size=64, device=torch.device("cpu"))
    return summarise_group(words)


def layer_sweep(out: Path, clip: Path, size: WorldSize) -> dict:
    path = out / "stand_in" / "layer_sweep.json"
    if path.is_file():
        return json.loads(path.read_text())
    model = _stand_in_model(clip, size, tap_layer=1)
    raw = _noise_dir(out, 15) / "luperson_mllm"
    depth = min(model.cfg.vision_layers, model.cfg.text_layers)
    sweep = {}
    for layer in range(1, depth + 1):
        model.tap_layer = layer
        sweep[str(layer)] = noise_auroc(model, raw, size.sweep_captions)
    best = max(sweep, key=lambda layer: sweep[layer]["auroc"]["max"] or 0.0)
    result = {"per_layer": sweep, "best_layer": int(best)}
    path.write_text(json.dumps(result, indent=1))
    return result


def evaluate_targets(model, targets: Path) -> dict:
    import torch

    from data.datasets import load_split
    from eval.encode import encode_split
    from eval.metrics import retrieval_metrics_from_features

    torch.set_num_threads(1)
    results = {}
    for name, folder in TARGETS.items():
        split = load_split(name, targets / folder, "test")
        image_feats, text_feats = encode_split(model, split, batch_size=64)
        metrics = retrieval_metrics_from_features(
            text_feats, image_feats, torch.tensor(split.caption_pids), torch.tensor(split.image_pids)
        )
        results[name] = {"R1": metrics["R1"], "mAP": metrics["mAP"]}
    return results


def masking_in_epoch_2(run_dir: Path, raw_dir: Path, shards: Path, mask_prob: float, max_captions: int) -> dict:
    """Mean r' (Eq. 4, clipped) over the tokens of wrong and of correct attribute words, from the noise table that
    drove epoch 2's masks (saved with the checkpoint after epoch 1; one rank, so the table is whole)."""
    from safetensors.torch import load_file

    from data.manifest import MANIFEST, Manifest
    from data.order import packed_positions
    from data.tokenizer import CaptionTokenizer
    from engine.method.nam import mask_probabilities, valid_token_mask
    from engine.method.noise_table import UNSCORED, dequantise
    from eval.analysis.noise_auroc import select_captions, word_token_spans

    state = load_file(str(run_dir / "checkpoints" / "epoch0001" / "rank00000_state.safetensors"))
    owned = state["noise_table.owned"]  # (captions, N) uint8, row = caption id on one rank
    manifest = Manifest.load(shards)
    packing = json.loads((Path(shards) / MANIFEST).read_text())
    position = packed_positions([p.name for p in (raw_dir / "imgs").iterdir()], packing.get("image_order"))
    tokenizer = CaptionTokenizer(owned.shape[1])
    captions, _ = select_captions(raw_dir, max_captions)
    sums = {"wrong": [0.0, 0], "correct": [0.0, 0]}
    for caption in captions:
        caption_id = position[caption.image] * len(manifest.sources) + manifest.sources.index(Path(caption.file).stem)
        codes = owned[caption_id]
        ids = tokenizer([caption.text])  # (1, N)
        valid = valid_token_mask(ids)
        if ((codes == UNSCORED) & valid[0]).any():
            continue  # not trained on in epoch 1 (a dropped tail)
        probabilities = mask_probabilities(dequantise(codes)[None], valid, mask_prob)[0]
        eot = int(ids.argmax())
        spans = word_token_spans(tokenizer, caption.text, [(w.char_start, w.char_end) for w in caption.words])
        for word, (first, last) in zip(caption.words, spans, strict=True):
            if 1 + last > eot:
                continue
            group = sums["wrong" if word.wrong else "correct"]
            group[0] += float(probabilities[1 + first : 1 + last].mean())
            group[1] += 1
    return {
        kind: {"mean": total / count if count else math.nan, "words": count} for kind, (total, count) in sums.items()
    } | {"p": mask_prob}


def run_row(
    out: Path, row: Row, seed: int, *, clip: Path, tap_layer: int, size: WorldSize, keep_checkpoints: bool = False
) -> dict:
    """Trains (or, for the untrained row, only evaluates) one row at one seed and writes its result.json. Once the
    result is written, the run's per-epoch checkpoints (about 130 MB each, optimizer state included) are removed
    unless keep_checkpoints: the measurements need them only until then, and final/ keeps the trained weights."""
    result_path = out / "runs" / row.name / f"seed{seed}" / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    targets = out / "world" / "targets"
    started = time.perf_counter()
    if not row.trains:
        result = {"targets": evaluate_targets(_stand_in_model(clip, size, tap_layer), targets)}
    else:
        shards = shards_for(out, row.noise, row.captions)
        raw = _noise_dir(out, row.noise) / "luperson_mllm"
        run_dir = result_path.parent / "run"
        overrides = [o if o != "ORACLE" else f"nam.oracle_noise={raw / 'noise_words.jsonl'}" for o in row.overrides]
        _python(
            "-m", "launcher.train", "--config", str(ABLATION_CONFIG), *size.extra, f"model.pretrained={clip}",
            f"nam.tap_layer={tap_layer}", f"data.shards={shards}", f"train.seed={seed}", f"train.run_dir={run_dir}",
            *overrides, log=result_path.parent / "train.log",
        )  # fmt: skip
        result = {"targets": evaluate_targets(_load_model(run_dir / "final"), targets)}
        if "nam.masking=nam" in row.overrides:
            epochs = sorted((run_dir / "checkpoints").glob("epoch*"))
            result["noise_auroc_per_epoch"] = {
                "0": noise_auroc(_stand_in_model(clip, size, tap_layer), raw, size.sweep_captions)["auroc"]["max"]
            } | {
                str(int(tag.name[5:])): noise_auroc(_load_model(tag), raw, size.sweep_captions)["auroc"]["max"]
                for tag in epochs
            }
            if (run_dir / "checkpoints" / "epoch0001").is_dir() and len(epochs) > 1:
                result["masking_epoch_2"] = masking_in_epoch_2(run_dir, raw, shards, 0.15, size.sweep_captions)
    result |= {"row": row.name, "seed": seed, "seconds": round(time.perf_counter() - started, 1)}
    # what the figures depend on beyond the seed: this process's (the evaluation's) and the training run's
    from engine.runtime.environment import ENVIRONMENT_FILE, run_environment

    result["environment"] = run_environment()
    if row.trains and (result_path.parent / "run" / ENVIRONMENT_FILE).is_file():
        result["training_environment"] = json.loads((result_path.parent / "run" / ENVIRONMENT_FILE).read_text())
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1))
    if row.trains and not keep_checkpoints:
        shutil.rmtree(result_path.parent / "run" / "checkpoints", ignore_errors=True)
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


# (row, baseline, what the difference measures): differences are taken per seed (same seed, same data order).
COMPARISONS = (
    ("tde_em", "static_em", "TDE: static + dynamic captions against static only, EM, 15%"),
    ("tde_nam", "tde_em", "NAM against EM at 15% wrong words"),
    ("nam_00", "em_00", "NAM against EM at 0% wrong words"),
    ("nam_30", "em_30", "NAM against EM at 30% wrong words"),
    ("oracle_15", "tde_em", "oracle noise against EM at 15% (the ceiling)"),
    ("oracle_30", "em_30", "oracle noise against EM at 30% (the ceiling)"),
    ("tde_nam_mlm", "tde_nam", "NAM + MLM loss against NAM, 15%"),
)


def paired_differences(results: dict[str, list[dict]]) -> list[str]:
    """Markdown lines: R1 differences per seed between matched rows, mean ± std, per target set."""
    lines = ["", "## Paired differences in R1 (row minus baseline, same seed): mean ± std over seeds", ""]
    lines += ["| comparison | seeds | " + " | ".join(TARGETS) + " |", "|" + "---|" * (2 + len(TARGETS))]
    shown = 0
    for row, baseline, label in COMPARISONS:
        pairs = {r["seed"]: r for r in results.get(row, [])}
        matched = [(pairs[b["seed"]], b) for b in results.get(baseline, []) if b["seed"] in pairs]
        if not matched:
            continue
        cells = []
        for target in TARGETS:
            deltas = [a["targets"][target]["R1"] - b["targets"][target]["R1"] for a, b in matched]
            mean, std = _mean_std(deltas)
            cells.append(f"{mean:+.2f} ± {std:.2f} ({', '.join(f'{d:+.2f}' for d in deltas)})")
        lines.append(f"| {label} | {len(matched)} | " + " | ".join(cells) + " |")
        shown += 1
    return lines if shown else []


def write_report(out: Path, rows: list[Row], results: dict[str, list[dict]], sweep: dict, header: dict) -> Path:
    lines = ["# Miniature ablation", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", "## Stand-in CLIP: noise AUROC of wrong vs correct attribute words per layer (15% set)", ""]
    lines += [
        "| layer | AUROC (max over tokens) | AUROC (mean) | wrong words | correct words |",
        "|---|---|---|---|---|",
    ]
    for layer, summary in sweep["per_layer"].items():
        lines.append(
            f"| {layer} | {summary['auroc']['max']} | {summary['auroc']['mean']} | {summary['wrong']} | {summary['correct']} |"
        )
    lines += ["", f"NAM's tap layer in every run: {sweep['best_layer']} (the highest AUROC).", ""]
    lines += ["## R1 / mAP on the test split of each target set: mean ± std over seeds", ""]
    head = "| row | shows | seeds | " + " | ".join(f"{t} R1 | {t} mAP" for t in TARGETS) + " |"
    lines += [head, "|" + "---|" * (3 + 2 * len(TARGETS))]
    for row in rows:
        done = results.get(row.name, [])
        if not done:
            continue
        cells = []
        for target in TARGETS:
            for metric in ("R1", "mAP"):
                mean, std = _mean_std([r["targets"][target][metric] for r in done])
                cells.append(f"{mean:.2f} ± {std:.2f}")
        lines.append(f"| {row.label} | {row.shows} | {len(done)} | " + " | ".join(cells) + " |")
    lines += paired_differences(results)
    lines += ["", "## Every seed", ""]
    for row in rows:
        for result in results.get(row.name, []):
            scores = ", ".join(
                f"{t} {result['targets'][t]['R1']:.2f}/{result['targets'][t]['mAP']:.2f}" for t in TARGETS
            )
            extra = ""
            aurocs = result.get("noise_auroc_per_epoch", {})
            if any(a is not None for a in aurocs.values()):
                extra += "; noise AUROC by epoch " + ", ".join(f"{e}: {a}" for e, a in aurocs.items())
            elif aurocs:
                extra += "; noise AUROC: none (no wrong words in its captions)"
            if "masking_epoch_2" in result:
                m = result["masking_epoch_2"]
                wrong = "none" if math.isnan(m["wrong"]["mean"]) else f"{m['wrong']['mean']:.3f}"
                extra += (
                    f"; epoch-2 masking probability wrong {wrong} vs correct {m['correct']['mean']:.3f} (p {m['p']})"
                )
            lines.append(f"- {row.name} seed {result['seed']}: R1/mAP {scores}{extra} ({result['seconds']} s)")
    path = out / "ablation.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "ablation.json").write_text(json.dumps({"header": header, "sweep": sweep, "results": results}, indent=1))
    _plot(out / "ablation.png", rows, results)
    return path


def _plot(path: Path, rows: list[Row], results: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [row for row in rows if results.get(row.name)]
    figure, axes = plt.subplots(1, len(TARGETS), figsize=(5 * len(TARGETS), 0.45 * len(shown) + 1.5), sharey=True)
    for axis, target in zip(axes, TARGETS, strict=True):
        stats = [_mean_std([r["targets"][target]["R1"] for r in results[row.name]]) for row in shown]
        axis.barh(range(len(shown)), [m for m, _ in stats], xerr=[s for _, s in stats], color="tab:blue", capsize=3)
        axis.set_title(f"{target} R1 (mean ± std over seeds)")
        axis.set_yticks(range(len(shown)), [row.label for row in shown])
        axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m launcher.ablation", description=__doc__.split("\n\n")[0])
    output_argument(
        parser, "--out", kind="folder", required=True,
        help="folder for the world, runs and report: new, empty, or an ablation folder to continue",
    )  # fmt: skip
    parser.add_argument("--rows", help=f"comma-separated subset of: {', '.join(ROWS_BY_NAME)} (default all)")
    parser.add_argument("--seeds", type=positive_int, help="seeds per row (default 3; 1 with --reduced)")
    parser.add_argument("--clip", type=Path, help="use this OpenAI-format stand-in instead of training one")
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="training runs at once, one CPU thread each (2 on a 2-core machine)",
    )
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every run's per-epoch checkpoints (about 130 MB per epoch each; by default only final/ stays)",
    )
    parser.add_argument("--reduced", action="store_true", help="tiny world and model, 1 seed, 1 epoch, 2 rows")
    parser.add_argument("--pretrain-images", type=positive_int, help="LUPerson-MLLM-like images (default 600)")
    parser.add_argument(
        "--set", dest="extra", action="append", default=[], help="override for every run, e.g. train.epochs=2"
    )
    return parser.parse_args(argv)


@error_boundary
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # An ablation folder continues where it stopped (finished runs are kept); any other non-empty folder is refused.
    check_output_folder(args.out, flag="--out", overwrite=folder_owner(args.out) == TOOL, tool=TOOL)
    args.out.mkdir(exist_ok=True)
    claim_folder(args.out, TOOL)
    size = REDUCED if args.reduced else WorldSize()
    size = WorldSize(**{**size.__dict__, "extra": [*size.extra, *args.extra]})
    if args.pretrain_images is not None:
        size.pretrain_images = args.pretrain_images
    if args.jobs < 1:
        print("error: --jobs must be >= 1", file=sys.stderr)
        return 2
    if args.seeds is not None:
        if args.seeds < 1:
            print("error: --seeds must be >= 1", file=sys.stderr)
            return 2
        size.seeds = args.seeds
    names = args.rows.split(",") if args.rows else list(REDUCED_ROWS if args.reduced else ROWS_BY_NAME)
    unknown = [name for name in names if name not in ROWS_BY_NAME]
    if unknown:
        print(f"error: unknown row {unknown[0]!r} (valid: {', '.join(ROWS_BY_NAME)})", file=sys.stderr)
        return 2
    rows = [ROWS_BY_NAME[name] for name in names]
    started = time.perf_counter()
    try:
        build_world(args.out, size, {15} | {row.noise for row in rows})
        clip = args.clip or stand_in_clip(args.out, size)
        sweep = layer_sweep(args.out, clip, size)
        tap_layer = sweep["best_layer"]
        # seed-major: an interrupted run still has every row at its first seeds; the untrained row is evaluated once
        tasks = [(row, seed) for seed in range(size.seeds) for row in rows if row.trains or seed == 0]
        for noise, captions in sorted({(row.noise, row.captions) for row, _ in tasks if row.trains}):
            shards_for(args.out, noise, captions)  # packed once, before parallel runs could race on a folder
        done: dict[tuple[str, int], dict] = {}
        options = {"clip": clip, "tap_layer": tap_layer, "size": size, "keep_checkpoints": args.keep_checkpoints}
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each run is its own process; threads wait on them
            futures = {pool.submit(run_row, args.out, row, seed, **options): (row, seed) for row, seed in tasks}
            for future in as_completed(futures):
                row, seed = futures[future]
                try:
                    done[(row.name, seed)] = future.result()
                except Exception:
                    pool.shutdown(cancel_futures=True)  # runs not started are dropped; running ones finish
                    raise
                print(f"{row.name} seed {seed}: " + json.dumps(done[(row.name, seed)]["targets"]), flush=True)
        results: dict[str, list[dict]] = {}
        for row, seed in sorted(tasks, key=lambda task: task[1]):
            results.setdefault(row.name, []).append(done[(row.name, seed)])
    except Exception as error:  # every failure becomes one line naming the stage's log
        print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 2
    header = {
        "world": f"{size.pretrain_images} pretraining images x 4 captions, {size.web_images} web images, "
        f"{size.test_identities} test identities x {size.images_per_test_identity} images per target set",
        "seeds": size.seeds,
        "overrides": " ".join(size.extra) or "none",
        "wall time": f"{(time.perf_counter() - started) / 60:.1f} min (stages already done were skipped)",
    }
    print(f"wrote {write_report(args.out, rows, results, sweep, header)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
