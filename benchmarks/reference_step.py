"""The reference implementation's pretraining step, rebuilt in plain PyTorch from its described behaviour
(docs/method.md), as the baseline of the step benchmark's speed ratio. None of its code is used.

python -m benchmarks.reference_step [--batch-size 64] [--steps 10] [--out result.json]

What it does, as the reference does:
- an OpenAI-CLIP-style ViT-B/16 dual encoder (nn.MultiheadAttention blocks, QuickGELU) at 384x128 and 77 tokens;
- on CUDA: fp16 weights, fp16 autocast, torch.optim.Adam with eps 1e-3 and coupled weight decay 4e-5, no gradient
  clipping and no loss scaling (fp16 weights leave nothing for a GradScaler to unscale), nn.DataParallel over
  every visible GPU; on the CPU: fp32, no autocast (DataParallel then just calls the module);
- T_nam and T_full go through all 12 text layers as one batch of 2B captions; the loss takes T_nam's EOT
  features, NAM reads T_full's tokens after layer l;
- scoring materialises the (B, N, M) cosine tensor with einsum and takes its max over patches; the scores are
  copied to the host and kept per caption in a Python dict.
The masking itself happens in the reference's data loader workers, off the step's critical path, so it is
done outside the timed step here too. SDM is engine/method/losses.py's (the same formula).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from data.cli_errors import error_boundary
from data.outputs import check_output_file, output_argument, write_text_atomically
from engine.method.losses import sdm_loss
from engine.method.nam import apply_mask, mask_probabilities, uniform_probabilities, valid_token_mask

TEMPERATURE = 0.02
MASK_PROB = 0.15
WARMUP_STEPS = 2


@dataclass(frozen=True)
class ReferenceSizes:
    image_size: tuple[int, int] = (384, 128)
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    embed_dim: int = 512
    context_length: int = 77
    vocab_size: int = 49408
    tap_layer: int = 10

    @property
    def patches(self) -> int:
        return (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); sequence-first (L, B, D) as nn.MultiheadAttention."""

    def __init__(self, width: int, heads: int, causal_length: int | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), QuickGELU(), nn.Linear(4 * width, width))
        mask = None
        if causal_length is not None:
            mask = torch.full((causal_length, causal_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = None if self.attn_mask is None else self.attn_mask.to(x.dtype)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class ReferenceCLIP(nn.Module):
    """Both towers; forward returns v_cls (B, E), the image tap patches (B, M, E), t_eos (T, E) and the text tap
    tokens (T, N, E), taps through the tower's final LayerNorm and projection and detached."""

    def __init__(self, sizes: ReferenceSizes) -> None:
        super().__init__()
        self.sizes = sizes
        vw, tw = sizes.vision_width, sizes.text_width
        self.conv1 = nn.Conv2d(3, vw, kernel_size=sizes.patch_size, stride=sizes.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(vw) * vw**-0.5)
        self.visual_positions = nn.Parameter(torch.randn(sizes.patches + 1, vw) * vw**-0.5)
        self.ln_pre, self.ln_post = nn.LayerNorm(vw), nn.LayerNorm(vw)
        self.visual = nn.ModuleList(ResidualAttentionBlock(vw, sizes.vision_heads) for _ in range(sizes.vision_layers))
        self.visual_proj = nn.Parameter(torch.randn(vw, sizes.embed_dim) * vw**-0.5)
        self.token_embedding = nn.Embedding(sizes.vocab_size, tw)
        self.text_positions = nn.Parameter(torch.randn(sizes.context_length, tw) * 0.01)
        n = sizes.context_length
        self.text = nn.ModuleList(ResidualAttentionBlock(tw, sizes.text_heads, n) for _ in range(sizes.text_layers))
        self.ln_final = nn.LayerNorm(tw)
        self.text_proj = nn.Parameter(torch.randn(tw, sizes.embed_dim) * tw**-0.5)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tap = self.sizes.tap_layer
        x = self.conv1(images.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)  # (B, M, Dv)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.visual_positions.to(x.dtype)).transpose(0, 1)  # (1+M, B, Dv)
        for depth, block in enumerate(self.visual, start=1):
            x = block(x)
            if depth == tap:
                image_tap = (self.ln_post(x[1:].transpose(0, 1)) @ self.visual_proj).detach()  # (B, M, E)
        v_cls = self.ln_post(x[0]) @ self.visual_proj  # (B, E)
        t = (self.token_embedding(ids) + self.text_positions.to(self.token_embedding.weight.dtype)).transpose(0, 1)
        for depth, block in enumerate(self.text, start=1):
            t = block(t)
            if depth == tap:
                text_tap = (self.ln_final(t.transpose(0, 1)) @ self.text_proj).detach()  # (T, N, E)
        t = self.ln_final(t.transpose(0, 1))  # (T, N, Dt)
        t_eos = t[torch.arange(t.shape[0], device=t.device), ids.argmax(dim=-1)] @ self.text_proj  # (T, E)
        return v_cls, image_tap, t_eos, text_tap


def einsum_max_scores(text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, E), (B, M, E) -> (B, N): max cosine over patches, through the materialised (B, N, M) tensor."""
    text = F.normalize(text_tokens, dim=-1)
    image = F.normalize(image_tokens, dim=-1)
    return torch.einsum("bnd,bmd->bnm", text, image).max(dim=-1).values


class ReferenceStep:
    """Model, optimizer and the per-caption score store of one reference run."""

    def __init__(self, sizes: ReferenceSizes, *, device: torch.device, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.sizes, self.device = sizes, device
        self.half = device.type == "cuda"
        model = ReferenceCLIP(sizes).to(device)
        if self.half:
            model = model.half()
        self.model = nn.DataParallel(model)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, eps=1e-3, weight_decay=4e-5)
        self.scores: dict[int, torch.Tensor] = {}  # caption id -> (N,) noise r on the host

    def mask(self, ids: torch.Tensor, caption_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """T_nam from the stored scores (uniform p for captions not scored yet): the data loader's work."""
        valid = valid_token_mask(ids)
        probabilities = uniform_probabilities(valid, MASK_PROB)
        known = [i for i, c in enumerate(caption_ids.tolist()) if c in self.scores]
        if known:
            noise = torch.stack([self.scores[int(caption_ids[i])] for i in known])
            probabilities[known] = mask_probabilities(noise, valid[known], MASK_PROB, clip=True)
        return apply_mask(ids, probabilities, valid, generator)[0]

    def step(self, images: torch.Tensor, ids: torch.Tensor, masked: torch.Tensor, pids: torch.Tensor, caption_ids):
        """One training step; returns the loss (a device tensor)."""
        batch = ids.shape[0]
        images, both = images.to(self.device), torch.cat([masked, ids]).to(self.device)  # (2B, N)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
            v_cls, image_tap, t_eos, text_tap = self.model(images, both)
            loss = sdm_loss(v_cls.float(), t_eos[:batch].float(), pids.to(self.device), temperature=TEMPERATURE)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            noise = (1.0 - einsum_max_scores(text_tap[batch:], image_tap).float()).cpu()  # (B, N), host sync
        for row, caption in enumerate(caption_ids.tolist()):
            self.scores[caption] = noise[row]
        return loss.detach()


def synthetic_inputs(sizes: ReferenceSizes, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """images (B, 3, H, W), ids (B, N) with 20..74 tokens, pids and caption ids (B,)."""
    images = torch.randn(batch, 3, *sizes.image_size, generator=generator)
    ids = torch.zeros(batch, sizes.context_length, dtype=torch.long)
    shortest = min(20, sizes.context_length - 3)
    for row in range(batch):
        length = int(torch.randint(shortest, sizes.context_length - 2, (1,), generator=generator))
        ids[row, 0] = sizes.vocab_size - 2  # SOT
        ids[row, 1 : 1 + length] = torch.randint(1, sizes.vocab_size - 3, (length,), generator=generator)
        ids[row, 1 + length] = sizes.vocab_size - 1  # EOT: the largest id, as argmax pooling expects
    return images, ids, torch.arange(batch), torch.arange(batch)


def time_reference_steps(sizes: ReferenceSizes, *, batch: int, steps: int, device: torch.device) -> dict:
    """Median seconds per step after WARMUP_STEPS; the inputs stay the same (no loader in the timing)."""
    runner = ReferenceStep(sizes, device=device)
    generator = torch.Generator().manual_seed(0)
    images, ids, pids, caption_ids = synthetic_inputs(sizes, batch, generator)
    seconds, losses = [], []
    for step in range(WARMUP_STEPS + steps):
        masked = runner.mask(ids, caption_ids, generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        losses.append(float(runner.step(images, ids, masked, pids, caption_ids)))
        if step >= WARMUP_STEPS:
            seconds.append(time.perf_counter() - start)  # the step ends with the scores' host copy: synced
    step_s = statistics.median(seconds)
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
        "gpus": torch.cuda.device_count() if device.type == "cuda" else 0,
        "precision": "fp16" if runner.half else "fp32",
        "batch_size": batch,
        "step_ms": 1000 * step_s,
        "samples_per_s": batch / step_s,
        "losses": losses,
        "scored_captions": len(runner.scores),
    }


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference_step", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64, help="the whole batch, split over the GPUs")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after two warmup steps")
    output_argument(
        parser, "--out", kind="file", default=None, help="also write the result here as JSON (must not exist)"
    )
    args = parser.parse_args(argv)
    if args.batch_size < 2 or args.steps < 1:
        parser.error("--batch-size must be >= 2 (SDM compares captions) and --steps >= 1")
    if args.out is not None:
        check_output_file(args.out, flag="--out")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = time_reference_steps(ReferenceSizes(), batch=args.batch_size, steps=args.steps, device=device)
    print(
        f"reference step ({result['device']}, {result['gpus']} GPU(s), {result['precision']}): batch "
        f"{result['batch_size']}, {result['step_ms']:.1f} ms/step, {result['samples_per_s']:.1f} samples/s"
    )
    if args.out is not None:
        write_text_atomically(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
