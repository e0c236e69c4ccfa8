"""Where the time of one pretraining step goes: the real DeepSpeed engine and train_step, on synthetic in-memory
batches (no data loader, so the model is measured alone).

python -m benchmarks.benchmark_train_step --config configs/pretrain_luperson_mllm.yaml [--steps N] [--batch-size B]
    [--peak-tflops T] [--out result.json] [section.key=value ...]
deepspeed --num_gpus 2 --module benchmarks.benchmark_train_step ...   (several ranks; gloo on the CPU)

Per masking mode (NAM, then EM, alternating step by step so that other load slows both alike):
- samples/s of `engine.runtime.trainer.train_step` itself, untouched, one device sync per step;
- the same step split into its parts (masking, forward, SDM with its gathers, backward, optimizer, NAM scoring,
  noise-table record), timed with a device sync between parts, so the parts add up to a little more than the step;
- the FLOPs of one whole step, counted by torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions and
  attention; not elementwise work), the achieved TFLOP/s, and the MFU against --peak-tflops;
- peak memory: CUDA max allocated, or the peak RSS of each rank on the CPU.
Weights are random (the speed does not depend on them) and captions random BPE ids of 20..74 tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from data.cli_errors import error_boundary
from data.outputs import check_output_file, output_argument, write_text_atomically
from data.tokenizer import EOT_ID, MASK_ID, SOT_ID
from engine.config import Config, ConfigError, load_config

PARTS = ("masking", "forward", "sdm_and_gathers", "backward", "optimizer", "nam_scoring", "noise_record")
MIN_CAPTION_TOKENS = 20
WARMUP_STEPS = 1
# Epoch 1: NAM's masking reads the noise table (epoch 0 would skip it, as no scores exist yet).
EPOCH = 1


# PyTorch's CPU attention kernel has no FLOP formula in torch's registry; it does the same matmuls as the CUDA
# kernels, so their formulas apply.
def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def synthetic_batch(config: Config, batch_size: int, *, rank: int, generator: torch.Generator) -> dict:
    """A loader-shaped batch: images (B, 3, H, W), ids (B, N) as SOT + tokens + EOT + padding, distinct pids and
    caption ids (B,) per rank."""
    model = config.model
    images = torch.randn(batch_size, 3, *model.image_size, generator=generator)
    ids = torch.zeros(batch_size, model.context_length, dtype=torch.long)
    high = max(MIN_CAPTION_TOKENS + 1, model.context_length - 1)
    lengths = torch.randint(min(MIN_CAPTION_TOKENS, model.context_length - 2), high, (batch_size,), generator=generator)
    for row, length in enumerate(lengths.clamp(max=model.context_length - 2).tolist()):
        ids[row, 0] = SOT_ID
        ids[row, 1 : 1 + length] = torch.randint(1, min(MASK_ID, model.vocab_size - 1), (length,), generator=generator)
        ids[row, 1 + length] = min(EOT_ID, model.vocab_size - 1)
    first = rank * batch_size
    return {
        "image": images,
        "ids": ids,
        "pid": torch.arange(first, first + batch_size),
        "caption_id": torch.arange(first, first + batch_size),
    }


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PartTimer:
    """Seconds per named part of one step; the device is synchronised at every part boundary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def part(self, name: str):
        synchronize()
        start = time.perf_counter()
        yield
        synchronize()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def timed_train_step(ds_engine, batch: dict, config: Config, noise_table, *, generator: torch.Generator) -> dict:
    """engine.runtime.trainer.train_step's SDM pretraining path, piece by piece, each piece timed: the same functions in the
    same order. Returns seconds per part."""
    from engine.method.losses import sdm_loss
    from engine.method.nam import TokenMasker, valid_token_mask
    from engine.runtime import collectives
    from engine.runtime.collectives import device
    from engine.runtime.reference_precision import reference_autocast
    from kernels.token_patch_max_cosine import token_patch_max_cosine

    timer = PartTimer()
    ids, caption_ids = batch["ids"], batch["caption_id"]
    score = config.nam.masking == "nam"
    target = device()
    dtype = next(ds_engine.module.parameters()).dtype
    with timer.part("masking"):
        masked_ids, _ = TokenMasker(config.nam, noise_table).mask(ids, caption_ids, epoch=EPOCH, generator=generator)
    with timer.part("forward"), reference_autocast(config.train.precision):
        out = ds_engine(
            batch["image"].to(target, dtype=dtype, non_blocking=True),
            masked_ids.to(target, non_blocking=True),
            score_ids=ids.to(target, non_blocking=True) if score else None,
        )
    with timer.part("sdm_and_gathers"), reference_autocast(config.train.precision):
        pids = batch["pid"].to(target, non_blocking=True)
        loss = sdm_loss(
            collectives.gather_with_grad(out["image_feats"]),
            collectives.gather_with_grad(out["text_feats"]),
            collectives.gather_no_grad(pids),
            temperature=config.loss.temperature,
            eps=config.loss.eps,
        )
    with timer.part("backward"):
        ds_engine.backward(loss)
    with timer.part("optimizer"):
        ds_engine.step()
    if score:
        with timer.part("nam_scoring"):
            valid = valid_token_mask(ids).to(target, non_blocking=True)
            similarity = token_patch_max_cosine(out["score_tokens"], out["image_tokens"], valid, impl=config.nam.kernel)
        with timer.part("noise_record"):
            noise_table.record(caption_ids, 1.0 - similarity, valid)
            settle = getattr(noise_table, "settle", None)
            if settle is not None:  # asynchronous staging: count the copy's completion in this part
                settle()
    return timer.seconds


def whole_step_seconds(ds_engine, batch: dict, config: Config, noise_table, *, generator: torch.Generator) -> float:
    """The untouched train_step, from its call to the device finishing its work."""
    from engine.method.nam import TokenMasker
    from engine.runtime.trainer import train_step

    masker = TokenMasker(config.nam, noise_table)
    synchronize()
    start = time.perf_counter()
    train_step(ds_engine, batch, config, masker, epoch=EPOCH, generator=generator)
    synchronize()
    return time.perf_counter() - start


class _GlobalTotalOnly:
    """Stands in for FlopCounterMode's per-module tracker: its hooks fail on tensors sliced under no_grad inside a
    forward (the NAM tap), and only the global total is wanted."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *args) -> None:
        return None


def count_step_flops(ds_engine, batch: dict, config: Config, noise_table, *, generator: torch.Generator) -> int:
    """FLOPs of one train_step on this rank (forward, backward, NAM scoring and the optimizer's matmuls, if any)."""
    from engine.method.nam import TokenMasker
    from engine.runtime.trainer import train_step

    masker = TokenMasker(config.nam, noise_table)
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    counter.mod_tracker = _GlobalTotalOnly()
    with counter:
        train_step(ds_engine, batch, config, masker, epoch=EPOCH, generator=generator)
    synchronize()
    return counter.get_total_flops()


def peak_memory_bytes() -> int:
    """CUDA max allocated on this rank's device, else this process's peak RSS (Linux reports KiB)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def with_masking(config: Config, masking: str) -> Config:
    return dataclasses.replace(config, nam=dataclasses.replace(config.nam, masking=masking))


def build_engine(config: Config, *, total_steps: int, world: int):
    """The training model and DeepSpeed engine exactly as engine.runtime.trainer.train builds them."""
    import deepspeed

    from engine.model.training_model import build_training_model, parameter_groups
    from engine.runtime.deepspeed_setup import deepspeed_config, resolve_precision
    from engine.runtime.reference_precision import FP16_REFERENCE, cast_like_reference

    torch.manual_seed(config.train.seed)
    model = build_training_model(config, SimpleNamespace(num_identities=None, root=Path("synthetic")))
    precision = resolve_precision(config.train.precision)
    if precision == FP16_REFERENCE:
        cast_like_reference(model)
    from engine.runtime.schedule import build_optimizer

    ds_config = deepspeed_config(config, world_size=world)
    ds_engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=build_optimizer(parameter_groups(model, config.optim), config.optim), config=ds_config
    )
    return ds_engine, precision


def run_benchmark(config: Config, *, steps: int, modes: tuple[str, ...] = ("nam", "em")) -> dict:
    """Every rank runs this (a collective); returns the result that rank 0 reports."""
    from engine.method.noise_table import ShardedNoiseTable
    from engine.runtime import collectives

    rank, world = collectives.rank(), collectives.world_size()
    batch_size = config.train.batch_size
    ds_engine, precision = build_engine(config, total_steps=(WARMUP_STEPS + steps + 1) * len(modes), world=world)
    generator = torch.Generator().manual_seed(config.train.seed + rank)
    batch = synthetic_batch(config, batch_size, rank=rank, generator=generator)
    noise_table = ShardedNoiseTable(world * batch_size, config.model.context_length)
    configs = {mode: with_masking(config, mode) for mode in modes}

    flops = {
        mode: count_step_flops(ds_engine, batch, configs[mode], noise_table, generator=generator) for mode in modes
    }
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    whole: dict[str, list[float]] = {mode: [] for mode in modes}
    parts: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for step in range(WARMUP_STEPS + steps):
        for mode in modes if step % 2 == 0 else modes[::-1]:
            seconds = whole_step_seconds(ds_engine, batch, configs[mode], noise_table, generator=generator)
            split = timed_train_step(ds_engine, batch, configs[mode], noise_table, generator=generator)
            if step >= WARMUP_STEPS:
                whole[mode].append(seconds)
                parts[mode].append(split)
    # Every rank's peak memory, on every rank (one small collective after the timing).
    memory = collectives.all_reduce_sum([float(peak_memory_bytes()) if r == rank else 0.0 for r in range(world)])

    results = {}
    for mode in modes:
        step_s = statistics.median(whole[mode])
        achieved = flops[mode] / step_s / 1e12
        results[mode] = {
            "step_ms": 1000 * step_s,
            "samples_per_s": world * batch_size / step_s,
            "parts_ms": {name: 1000 * statistics.median(p.get(name, 0.0) for p in parts[mode]) for name in PARTS},
            "flops_per_step_per_rank": flops[mode],
            "flops_per_sample": flops[mode] / batch_size,
            "achieved_tflops_per_rank": achieved,
        }
    device_name = (
        torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    )
    return {
        "device": device_name,
        "ranks": world,
        "batch_size_per_rank": batch_size,
        "precision": precision,
        "image_size": list(config.model.image_size),
        "context_length": config.model.context_length,
        "vision": f"width {config.model.vision_width}, {config.model.vision_layers} layers",
        "text": f"width {config.model.text_width}, {config.model.text_layers} layers",
        "tap_layer": config.nam.tap_layer,
        "kernel": config.nam.kernel,
        "timed_steps": steps,
        "modes": results,
        "nam_over_em_step_time": results["nam"]["step_ms"] / results["em"]["step_ms"] if len(modes) == 2 else None,
        "peak_memory_bytes_per_rank": [int(m) for m in memory],
        "peak_memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "rss",
        "torch": torch.__version__,
    }


def add_mfu(result: dict, peak_tflops: float | None) -> dict:
    result["peak_tflops"] = peak_tflops
    for row in result["modes"].values():
        row["mfu"] = row["achieved_tflops_per_rank"] / peak_tflops if peak_tflops else None
    return result


def report(result: dict) -> str:
    """The table rank 0 prints."""
    modes = result["modes"]
    names = list(modes)
    peak = result["peak_tflops"]
    lines = [
        f"{result['device']}; {result['ranks']} rank(s) x batch {result['batch_size_per_rank']}, {result['precision']}; "
        f"images {result['image_size'][0]}x{result['image_size'][1]}, {result['context_length']} tokens; "
        f"vision {result['vision']}, text {result['text']}; median of {result['timed_steps']} steps",
        f"{'':<22}" + "".join(f"{name.upper():>12}" for name in names),
        f"{'step ms':<22}" + "".join(f"{modes[n]['step_ms']:12.1f}" for n in names),
        f"{'samples/s (all ranks)':<22}" + "".join(f"{modes[n]['samples_per_s']:12.2f}" for n in names),
        "parts, ms (device synced between parts):",
    ]
    for part in PARTS:
        lines.append(f"  {part:<20}" + "".join(f"{modes[n]['parts_ms'][part]:12.1f}" for n in names))
    lines += [
        f"{'GFLOP per sample':<22}" + "".join(f"{modes[n]['flops_per_sample'] / 1e9:12.1f}" for n in names),
        f"{'TFLOP/s per rank':<22}" + "".join(f"{modes[n]['achieved_tflops_per_rank']:12.3f}" for n in names),
    ]
    if peak:
        lines.append(
            f"{'MFU':<22}" + "".join(f"{modes[n]['mfu']:12.1%}" for n in names) + f"   (peak {peak} TFLOP/s, "
            f"{result['precision']} assumed)"
        )
    else:
        lines.append(f"MFU: pass --peak-tflops (the device's dense {result['precision']} peak) to compute it")
    memory = ", ".join(f"{m / 2**30:.2f}" for m in result["peak_memory_bytes_per_rank"])
    kind = "CUDA max allocated" if result["peak_memory_kind"] == "cuda_max_allocated" else "peak RSS"
    lines.append(f"{kind} per rank, GiB: {memory}")
    if result["nam_over_em_step_time"] is not None:
        lines.append(f"NAM / EM step time: {result['nam_over_em_step_time']:.3f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.benchmark_train_step", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", required=True, help="training YAML, e.g. configs/pretrain_luperson_mllm.yaml")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode, after one warmup step")
    parser.add_argument("--batch-size", type=int, default=None, help="per rank; default: the config's")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense peak of one device in the precision")
    output_argument(
        parser, "--out", kind="file", default=None, help="also write the result here as JSON (must not exist)"
    )
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.precision=bf16")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error("--peak-tflops must be > 0")
    if args.out is not None:
        check_output_file(args.out, flag="--out", protect=[Path(args.config)])
    return args


def load_benchmark_config(args: argparse.Namespace) -> Config:
    """The config with the benchmark's batch size; random weights whatever model.pretrained says."""
    overrides = [*args.overrides, "model.pretrained=null"]
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    config = load_config(args.config, overrides)
    if config.loss.id_weight or config.loss.mlm_weight:
        raise ConfigError("benchmark_train_step times SDM pretraining: set loss.id_weight=0 and loss.mlm_weight=0")
    if config.nam.masking == "none":
        raise ConfigError("benchmark_train_step compares NAM and EM; nam.masking=none has no masking to time")
    from engine.runtime.preflight import check_machine

    check_machine(config)  # CUDA-only settings, refused in one line as launcher.train does
    return config


@error_boundary
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_benchmark_config(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from engine.runtime.deepspeed_setup import init_distributed, shutdown_distributed

    init_distributed()
    try:
        result = add_mfu(run_benchmark(config, steps=args.steps), args.peak_tflops)
        if os.environ.get("RANK", "0") == "0":
            print(report(result), flush=True)
            if args.out is not None:
                write_text_atomically(args.out, json.dumps(result, indent=2) + "\n")
    finally:
        shutdown_distributed(clean=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
