"""What NAM adds to a training step over the EM baseline, at the paper's ViT-B/16 sizes, on the CPU (docs/method.md).

python -m benchmarks.benchmark_nam_step [--batch-size 4] [--steps 5]

A step is mask, forward, SDM loss, backward and an AdamW step (torch only, no DeepSpeed), on random weights and
random captions.
- EM: every valid token is drawn with probability p; the forward never sees the unmasked caption.
- NAM: the mask is drawn from the previous step's noise; the forward also runs T_full through the first
  `tap_layer` text blocks under no_grad; after the step, token_patch_max_cosine scores the tokens and
  mask_probabilities turns the noise into the next step's probabilities.
Both start from the same seed and alternate step by step; one warmup step each, then the median of --steps.
Both models are held at once: about 5 GB at batch 4.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from data.cli_errors import error_boundary
from data.tokenizer import EOT_ID, MASK_ID, SOT_ID
from engine.config import ModelConfig
from engine.method.losses import sdm_loss
from engine.method.nam import apply_mask, mask_probabilities, uniform_probabilities, valid_token_mask
from engine.model import CLIPDualEncoder
from kernels.token_patch_max_cosine import token_patch_max_cosine

TAP_LAYER = 10  # layer l of docs/method.md
MASK_PROB = 0.15  # p
MIN_CAPTION_TOKENS = 20  # random captions hold 20..74 BPE tokens between SOT and EOT
WARMUP_STEPS = 1
SEED = 0


def random_batch(
    cfg: ModelConfig, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (B, 3, H, W), caption ids (B, N) as SOT + tokens + EOT + padding, pids (B,) all distinct)."""
    images = torch.randn(batch_size, 3, *cfg.image_size, generator=generator)
    ids = torch.zeros(batch_size, cfg.context_length, dtype=torch.long)
    lengths = torch.randint(MIN_CAPTION_TOKENS, cfg.context_length - 1, (batch_size,), generator=generator)
    for row, length in enumerate(lengths.tolist()):
        ids[row, 0] = SOT_ID
        ids[row, 1 : 1 + length] = torch.randint(1, MASK_ID, (length,), generator=generator)
        ids[row, 1 + length] = EOT_ID
    return images, ids, torch.arange(batch_size)


def train_step(
    model: CLIPDualEncoder,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    masking: str,
    probabilities: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """One step with `masking` "em" or "nam"; returns the masking probabilities (B, N) for the next step."""
    images, ids, pids = batch
    valid = valid_token_mask(ids)
    masked, _ = apply_mask(ids, probabilities, valid, generator)
    out = model(images, masked, score_ids=ids if masking == "nam" else None)
    loss = sdm_loss(out["image_feats"], out["text_feats"], pids)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if masking == "em":
        return probabilities
    similarity = token_patch_max_cosine(out["score_tokens"], out["image_tokens"], valid)  # (B, N)
    return mask_probabilities(1.0 - similarity, valid, MASK_PROB)


@dataclass
class StepRunner:
    """A fresh model, optimizer and batch built from SEED, stepping with one masking mode."""

    masking: str  # "em" or "nam"
    model: CLIPDualEncoder
    optimizer: torch.optim.Optimizer
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    generator: torch.Generator
    probabilities: torch.Tensor  # (B, N) for the next step

    @classmethod
    def build(cls, masking: str, *, cfg: ModelConfig, batch_size: int, tap_layer: int) -> StepRunner:
        torch.manual_seed(SEED)
        model = CLIPDualEncoder(cfg, tap_layer=tap_layer).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=4e-5)
        generator = torch.Generator().manual_seed(SEED)
        batch = random_batch(cfg, batch_size, generator)
        probabilities = uniform_probabilities(valid_token_mask(batch[1]), MASK_PROB)
        return cls(masking, model, optimizer, batch, generator, probabilities)

    def timed_step(self) -> float:
        start = time.perf_counter()
        self.probabilities = train_step(
            self.model,
            self.optimizer,
            self.batch,
            masking=self.masking,
            probabilities=self.probabilities,
            generator=self.generator,
        )
        return time.perf_counter() - start


def time_steps(*, cfg: ModelConfig, batch_size: int, steps: int, tap_layer: int = TAP_LAYER) -> dict[str, list[float]]:
    """Seconds per step after the warmup, per mode. The modes alternate step by step (EM first on even steps),
    so that other load on a shared machine slows both alike."""
    runners = [
        StepRunner.build(masking, cfg=cfg, batch_size=batch_size, tap_layer=tap_layer) for masking in ("em", "nam")
    ]
    seconds: dict[str, list[float]] = {runner.masking: [] for runner in runners}
    for step in range(WARMUP_STEPS + steps):
        for runner in runners if step % 2 == 0 else runners[::-1]:
            elapsed = runner.timed_step()
            if step >= WARMUP_STEPS:
                seconds[runner.masking].append(elapsed)
    return seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.benchmark_nam_step",
        description="CPU time of an EM and a NAM training step at ViT-B/16 sizes (random weights).",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode, after one warmup step")
    args = parser.parse_args(argv)
    if args.batch_size < 2 or args.steps < 1:
        parser.error("--batch-size must be >= 2 (SDM compares captions) and --steps >= 1")
    return args


@error_boundary
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = ModelConfig()
    height, width = cfg.image_size
    print(
        f"ViT-B/16 sizes: {height}x{width} images ({cfg.grid[0] * cfg.grid[1]} patches), {cfg.context_length} tokens, "
        f"tap layer {TAP_LAYER}; batch {args.batch_size}, CPU with {torch.get_num_threads()} threads, "
        f"median of {args.steps} steps"
    )
    seconds = time_steps(cfg=cfg, batch_size=args.batch_size, steps=args.steps)
    median_ms = {masking: 1000 * statistics.median(times) for masking, times in seconds.items()}
    for masking, times in seconds.items():
        print(f"{masking.upper():<4}{median_ms[masking]:10.1f} ms/step  (min {1000 * min(times):.1f})")
    print(f"NAM / EM  {median_ms['nam'] / median_ms['em']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
