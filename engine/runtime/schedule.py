"""The optimizer and learning-rate schedule the trainer hands to DeepSpeed: a torch optimizer (Adam or AdamW) over
the parameter groups of engine/model/training_model.py, and a torch `LambdaLR` whose factor is warmup-then-cosine.

With `optim.schedule: per_step` DeepSpeed steps the scheduler after every optimizer step and keeps its state in
its checkpoints. With `per_epoch` (the reference implementation's way) the trainer steps it once at every epoch
end, so the factor's argument is the epoch index, and the trainer saves its state with the train state.

Pure torch: no deepspeed, no process groups.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from engine.config import OptimConfig


def warmup_cosine_factor(
    position: int, *, warmup: int, total: int, start_factor: float, min_ratio: float = 0.0
) -> float:
    """lr multiple at `position` (a step or an epoch index) of `total`: linear from `start_factor` to 1 over the
    first `warmup` positions, then cosine from 1 to `min_ratio` over the rest. The reference's per-epoch factor is
    0.1·(1−e/5) + e/5 for e < 5, then 0.5·(1 + cos(π·(e−5)/25)) at 30 epochs."""
    if position < warmup:
        alpha = position / warmup
        return start_factor * (1.0 - alpha) + alpha
    decay = max(1, total - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(position - warmup, decay) / decay))
    return min_ratio + (1.0 - min_ratio) * cosine


def build_optimizer(groups: list[dict], optim: OptimConfig) -> torch.optim.Optimizer:
    """torch.optim.Adam (coupled L2 decay) or AdamW (decoupled); groups may carry their own lr and weight_decay."""
    kind = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
    return kind(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, *, epochs: int, total_steps: int) -> LambdaLR:
    """The LambdaLR of `optim.schedule`: over optimizer steps (per_step) or over epoch indices (per_epoch)."""
    if optim.schedule == "per_epoch":
        warmup, total = optim.warmup_epochs, epochs
    else:
        total = max(total_steps, 1)
        warmup = int(total * optim.warmup_fraction)

    def factor(position: int) -> float:
        return warmup_cosine_factor(
            position, warmup=warmup, total=total, start_factor=optim.warmup_start_factor, min_ratio=optim.min_lr_ratio
        )

    return LambdaLR(optimizer, factor)


def stepped_per_epoch(optim: OptimConfig) -> bool:
    return optim.schedule == "per_epoch"


__all__ = ["build_optimizer", "build_scheduler", "stepped_per_epoch", "warmup_cosine_factor"]
