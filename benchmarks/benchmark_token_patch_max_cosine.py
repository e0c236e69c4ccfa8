"""Time the fused token-patch cosine max (kernels/token_patch_max_cosine.py) against the PyTorch paths.

    python -m benchmarks.benchmark_token_patch_max_cosine [--batch-sizes 64,128] [--dtypes bf16,fp32] [--peak-gbps G]

Three candidates on the NAM shapes (N = 77 text tokens, M = 192 patches, D = 512), per dtype and batch size:
  triton      the fused kernel: normalisation, dots and the running max in registers, (B, N) written out
  torch       kernels/token_patch_max_cosine_ref.py: fp32 upcast, F.normalize, einsum, amax, mask
  einsum-max  the original implementation's path, the baseline: F.normalize, einsum('bnd,bmd->bnm') in the input
              dtype, .max(-1); it materialises the (B, N, M) similarity tensor
Times are medians of triton.testing.do_bench (warmup, L2 flushed between runs). Bandwidth counts the bytes the
fused kernel must move at least: text + image read, (B, N) fp32 written.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from data.cli_errors import error_boundary
from data.outputs import check_output_file, output_argument, write_text_atomically
from kernels.token_patch_max_cosine_ref import token_patch_max_cosine_ref

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def einsum_max(text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    """The original implementation's scoring: normalise, all N x M cosines, max over patches."""
    text = F.normalize(text_tokens, dim=-1)  # (B, N, D)
    image = F.normalize(image_tokens, dim=-1)  # (B, M, D)
    return torch.einsum("bnd,bmd->bnm", text, image).max(-1).values  # (B, N)


def peak_bandwidth_gbps(device: torch.device, override: float | None) -> float | None:
    """HBM peak from the device's memory clock (kHz) x bus width (bits) x 2 (double data rate), in GB/s."""
    if override is not None:
        return override
    properties = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(properties, "memory_clock_rate", 0), getattr(properties, "memory_bus_width", 0)
    if not clock_khz or not bus_bits:
        return None
    return clock_khz * 1e3 * (bus_bits / 8) * 2 / 1e9


def make_inputs(
    batch: int, n: int, m: int, d: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(batch)
    text = torch.randn(batch, n, d, device=device, dtype=dtype, generator=generator)  # (B, N, D)
    image = torch.randn(batch, m, d, device=device, dtype=dtype, generator=generator)  # (B, M, D)
    valid = torch.ones(batch, n, device=device, dtype=torch.bool)  # (B, N)
    valid[:, 20:] = False  # a typical caption: ~20 real tokens, then padding (every path still reads all N)
    return text, image, valid


def measure(
    text: torch.Tensor,
    image: torch.Tensor,
    valid: torch.Tensor,
    fused: Callable[..., torch.Tensor],
    bench: Callable[[Callable[[], object]], float],
) -> dict[str, float]:
    """Milliseconds per candidate, the fused kernel's GB/s and its max abs difference to the reference."""
    out = fused(text, image, valid)
    error = (out - token_patch_max_cosine_ref(text, image, valid)).abs().max().item()  # host sync, once per row
    row = {
        "triton": bench(lambda: fused(text, image, valid)),
        "torch": bench(lambda: token_patch_max_cosine_ref(text, image, valid)),
        "einsum": bench(lambda: einsum_max(text, image)),
        "error": error,
    }
    moved = text.numel() * text.element_size() + image.numel() * image.element_size() + out.numel() * 4
    row["gbps"] = moved / (row["triton"] * 1e-3) / 1e9
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="64,128,256,512,1024", help="comma-separated B values")
    parser.add_argument("--dtypes", default="bf16,fp32", help=f"comma-separated, from {', '.join(DTYPES)}")
    parser.add_argument("--n", type=int, default=77, help="text tokens per caption")
    parser.add_argument("--m", type=int, default=192, help="image patches per image")
    parser.add_argument("--d", type=int, default=512, help="feature width of the joint space")
    parser.add_argument("--peak-gbps", type=float, default=None, help="HBM peak in GB/s if the device cannot say")
    output_argument(
        parser, "--out", kind="file", default=None, help="also write the rows here as JSON (must not exist)"
    )
    args = parser.parse_args(argv)
    if args.out is not None:
        check_output_file(args.out, flag="--out")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    unknown = [d for d in args.dtypes.split(",") if d not in DTYPES]
    if unknown:
        parser.error(f"--dtypes: unknown {', '.join(unknown)}; expected some of {', '.join(DTYPES)}")
    args.dtypes = args.dtypes.split(",")
    return args


@error_boundary
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmark_token_patch_max_cosine: no CUDA device here; the benchmark times GPU kernels, nothing to run")
        return 0

    import triton.testing

    from kernels.token_patch_max_cosine_triton import token_patch_max_cosine_triton

    device = torch.device("cuda")
    bench = functools.partial(triton.testing.do_bench, return_mode="median")
    peak = peak_bandwidth_gbps(device, args.peak_gbps)
    peak_text = f"{peak:.0f} GB/s" if peak else "unknown (pass --peak-gbps)"
    print(f"{torch.cuda.get_device_name(device)}, HBM peak {peak_text}; N={args.n} M={args.m} D={args.d}")
    header = (
        f"{'dtype':>5} {'B':>5} | {'triton ms':>9} {'torch ms':>9} {'einsum ms':>9} | "
        f"{'x torch':>7} {'x einsum':>8} | {'GB/s':>7} {'of peak':>7} | {'max|err|':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for dtype_name in args.dtypes:
        for batch in args.batch_sizes:
            text, image, valid = make_inputs(batch, args.n, args.m, args.d, DTYPES[dtype_name], device)
            row = measure(text, image, valid, token_patch_max_cosine_triton, bench)
            rows.append(
                {"dtype": dtype_name, "batch": batch, **row, "share_of_peak": row["gbps"] / peak if peak else None}
            )
            share = f"{row['gbps'] / peak:7.1%}" if peak else f"{'n/a':>7}"
            print(
                f"{dtype_name:>5} {batch:>5} | {row['triton']:9.4f} {row['torch']:9.4f} {row['einsum']:9.4f} | "
                f"{row['torch'] / row['triton']:6.2f}x {row['einsum'] / row['triton']:7.2f}x | "
                f"{row['gbps']:7.0f} {share} | {row['error']:8.1e}"
            )
    if args.out is not None:
        result = {"device": torch.cuda.get_device_name(device), "peak_gbps": peak, "n": args.n, "m": args.m}
        write_text_atomically(args.out, json.dumps(result | {"d": args.d, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
