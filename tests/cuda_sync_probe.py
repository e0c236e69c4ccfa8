"""Run by tests/test_cuda.py in a process of its own (it joins a 1-rank nccl group): steady-state training steps
of train_step under torch.cuda.set_sync_debug_mode("error"), so that any host synchronisation raises.

DeepSpeed's optimizer step is the one part left out: its bf16 optimizer reads the gradient norm on the host to skip
a step whose gradients overflowed (`is_invalid_grad_norm` in deepspeed/runtime/utils.py), once per optimizer step.
Everything else in the step is ours and checked: masking (NAM, from the noise table), the input copies, forward,
SDM with its gathers, DeepSpeed's backward, the NAM scoring kernel and the staged copy of the scores."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import deepspeed
import torch

from engine.config import Config, NamConfig, TrainConfig
from engine.method.nam import TokenMasker
from engine.method.noise_table import ShardedNoiseTable
from engine.model.training_model import build_training_model, parameter_groups
from engine.runtime.deepspeed_setup import deepspeed_config, init_distributed, shutdown_distributed
from engine.runtime.schedule import build_optimizer
from engine.runtime.trainer import LossWindow, train_step

WARMUP_STEPS, CHECKED_STEPS, BATCH = 3, 3, 8


def main() -> int:
    from benchmarks.benchmark_train_step import synthetic_batch
    from tests.helpers import tiny_model_config

    cuda = torch.cuda.is_available()  # without CUDA the same steps run unchecked, so that this script cannot rot
    mode = torch.cuda.set_sync_debug_mode if cuda else lambda _: None
    init_distributed()
    config = Config(
        model=tiny_model_config(image_size=(64, 32), context_length=77),
        nam=NamConfig(tap_layer=1),
        train=TrainConfig(batch_size=BATCH, precision="bf16" if cuda else "fp32"),
    )
    model = build_training_model(config, SimpleNamespace(num_identities=None))
    ds_engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=build_optimizer(parameter_groups(model, config.optim), config.optim),
        config=deepspeed_config(config, world_size=1),
    )
    generator = torch.Generator().manual_seed(0)
    batch = synthetic_batch(config, BATCH, rank=0, generator=generator)
    table = ShardedNoiseTable(BATCH, config.model.context_length)
    masker = TokenMasker(config.nam, table)
    window = LossWindow()
    step = ds_engine.step

    def step_without_the_check():
        mode("default")
        try:
            step()
        finally:
            mode("error")

    ds_engine.step = step_without_the_check
    for index in range(WARMUP_STEPS + CHECKED_STEPS):
        if index == WARMUP_STEPS and cuda:
            torch.cuda.synchronize()
            mode("error")
        window.add(
            train_step(ds_engine, batch, config, masker, epoch=1, generator=generator)
        )  # epoch 1: NAM reads scores
    mode("default")
    table.settle()
    scored = sum(len(ids) for ids in table.pending_ids)
    checked = f"sync-free steps: {CHECKED_STEPS}" if cuda else f"no CUDA: {CHECKED_STEPS} steps not checked for syncs"
    print(f"{checked}, captions scored: {scored}, loss sum {float(window.loss):.4f}")
    shutdown_distributed(clean=True)
    return 0 if scored == (WARMUP_STEPS + CHECKED_STEPS) * BATCH else 1


if __name__ == "__main__":
    sys.exit(main())
