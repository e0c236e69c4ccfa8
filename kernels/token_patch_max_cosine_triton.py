"""Fused Triton kernel for the token-patch cosine max of NAM (docs/method.md); the reference is `token_patch_max_cosine_ref.py`.

The reference normalises both sides, materialises the (B, N, M) similarity tensor and reduces it. This kernel
keeps one (BLOCK_N, BLOCK_M) tile of dot products in registers, folds it into a running max and never writes
the similarities to global memory, so it reads each input about once and writes only the (B, N) result.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.token_patch_max_cosine_ref import INVALID_TOKEN_VALUE

NORM_EPS = 1e-12  # as F.normalize: a vector is divided by max(||x||, eps), so a zero vector has cosine 0
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Block sizes (see the launcher for the reasoning). tl.dot needs every block dimension >= 16.
BLOCK_N_MAX = 32  # text tokens per program: N = 77 -> 3 tiles (96 rows, 20% padding)
BLOCK_M = 64  # image tokens per inner step: M = 192 -> exactly 3 steps
BLOCK_D = 64  # features per dot step: D = 512 -> exactly 8 steps; 64 bf16 = one 128-byte line per row
NUM_WARPS = 4


@triton.jit
def _token_patch_max_cosine_kernel(
    Text_ptr,  # (B, N, D) fp32 | fp16 | bf16
    Image_ptr,  # (B, M, D) same dtype as Text_ptr
    Valid_ptr,  # (B, N) bool viewed as uint8; unused when HAS_VALID is False
    Out_ptr,  # (B, N) fp32
    N,
    M,
    D,
    stride_tb,
    stride_tn,
    stride_td,
    stride_ib,
    stride_im,
    stride_id,
    stride_vb,
    stride_vn,
    stride_ob,
    stride_on,
    eps,
    HAS_VALID: tl.constexpr,
    INVALID_VALUE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program per (text tile, sample): grid = (cdiv(N, BLOCK_N), B).

    For text tokens t_i = Text[b, i, :] and image tokens v_j = Image[b, j, :]:

        s[b, i] = max_{0 <= j < M}  (t_i . v_j) / (max(||t_i||, eps) * max(||v_j||, eps))

    which equals max_j <F.normalize(t_i), F.normalize(v_j)>. Out[b, i] = s[b, i] where Valid[b, i], else
    INVALID_VALUE. Dot products and squared norms accumulate in fp32 whatever the input dtype. The loop runs over
    M in BLOCK_M steps and, inside, over D in BLOCK_D steps; only the running max (BLOCK_N,) survives a step.
    DOT_PRECISION is "ieee" for fp32 operands; UPCAST_DOT (bf16 under the interpreter only) feeds tl.dot fp32.
    """
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)  # int64: B * N * D can pass 2**31 elements at large batches

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    mask_n = offs_n < N
    text_rows = Text_ptr + pid_b * stride_tb + offs_n[:, None] * stride_tn  # (BLOCK_N, 1)
    image_base = Image_ptr + pid_b * stride_ib

    # ||t_i||^2 once per tile; padded rows load zeros and are never stored.
    text_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        text = tl.load(text_rows + offs_d[None, :] * stride_td, mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)
        text = text.to(tl.float32)
        text_sq += tl.sum(text * text, axis=1)
    text_norm = tl.maximum(tl.sqrt(text_sq), eps)  # (BLOCK_N,)

    best = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        mask_m = offs_m < M
        image_rows = image_base + offs_m[:, None] * stride_im  # (BLOCK_M, 1)
        dots = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        image_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d[None, :] < D
            text = tl.load(text_rows + offs_d[None, :] * stride_td, mask=mask_n[:, None] & mask_d, other=0.0)
            image = tl.load(image_rows + offs_d[None, :] * stride_id, mask=mask_m[:, None] & mask_d, other=0.0)
            if UPCAST_DOT:  # interpreter only: its tl.dot multiplies bf16 storage bits (triton-lang/triton#11584)
                text, image = text.to(tl.float32), image.to(tl.float32)
            dots = tl.dot(text, tl.trans(image), dots, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
            image_f32 = image.to(tl.float32)
            image_sq += tl.sum(image_f32 * image_f32, axis=1)
        image_norm = tl.maximum(tl.sqrt(image_sq), eps)  # (BLOCK_M,)
        cosine = dots / (text_norm[:, None] * image_norm[None, :])
        cosine = tl.where(mask_m[None, :], cosine, float("-inf"))  # padded image columns never win the max
        best = tl.maximum(best, tl.max(cosine, axis=1))

    if HAS_VALID:
        valid = tl.load(Valid_ptr + pid_b * stride_vb + offs_n * stride_vn, mask=mask_n, other=0)
        best = tl.where(valid != 0, best, INVALID_VALUE)
    tl.store(Out_ptr + pid_b * stride_ob + offs_n * stride_on, best, mask=mask_n)


def _is_interpreted() -> bool:
    """True when the kernel above was built by Triton's CPU interpreter (TRITON_INTERPRET=1 at import time)."""
    return not isinstance(_token_patch_max_cosine_kernel, triton.runtime.JITFunction)


def interpreter_runs_with_this_numpy() -> bool:
    """False for Triton 3.6's interpreter under NumPy 2.4 or newer: it turns a kernel's scalar arguments (stored as
    1-element arrays) into ints with int(), which NumPy 2.4 refuses for arrays of one dimension; Triton 3.7 squeezes
    them first. Compiled kernels on a GPU do not take this path."""
    import numpy

    def release(version: str) -> tuple[int, int]:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)

    return not (release(triton.__version__) < (3, 7) and release(numpy.__version__) >= (2, 4))


def token_patch_max_cosine_triton(
    text_tokens: torch.Tensor, image_tokens: torch.Tensor, text_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """s[b, i] = max_j cos(text_tokens[b, i], image_tokens[b, j]), fused; same contract as the reference.

    text_tokens (B, N, D), image_tokens (B, M, D), both fp32 | fp16 | bf16 of one dtype; text_valid (B, N) bool
    or None -> (B, N) float32, INVALID_TOKEN_VALUE where text_valid is False.

    Layout: strided views whose feature dim has unit stride (e.g. `tokens[:, 1:]`, dropping CLS) are read in
    place through the stride arguments; any other layout is copied once with .contiguous(), deliberately,
    because loads along a strided feature dim cannot be vectorised.

    Block sizes: BLOCK_N = 32 text tokens per program (16 for N <= 16), so N = 77 takes 3 tiles with 20% padding
    (a single 128-row tile would pad 66%), and a per-GPU batch of 64 captions already gives 192 programs, more
    than an H100/H200 has SMs. The tiles of one caption run next to each other, so their repeated image reads
    hit L2, not HBM. BLOCK_M = BLOCK_D = 64 divide M = 192 and D = 512 exactly, and a (32, 64) fp32
    accumulator stays in registers with 4 warps.
    """
    _check_inputs(text_tokens, image_tokens, text_valid)
    if text_tokens.stride(-1) != 1:
        text_tokens = text_tokens.contiguous()
    if image_tokens.stride(-1) != 1:
        image_tokens = image_tokens.contiguous()

    batch, n, d = text_tokens.shape
    m = image_tokens.shape[1]
    out = torch.empty((batch, n), dtype=torch.float32, device=text_tokens.device)
    if batch == 0 or n == 0:
        return out
    if text_tokens.device.type != "cuda" and not interpreter_runs_with_this_numpy():
        import numpy

        raise ValueError(
            f"token_patch_max_cosine: Triton {triton.__version__}'s interpreter cannot run with NumPy "
            f"{numpy.__version__} (it needs Triton 3.7+ or NumPy < 2.4); use impl='auto' or 'torch' on CPU"
        )
    if text_valid is None:
        valid, stride_vb, stride_vn = out, 0, 0  # never read: HAS_VALID=False prunes the load
    else:
        valid = text_valid.view(torch.uint8)  # bool and uint8 share a layout; Triton loads uint8 cleanly
        stride_vb, stride_vn = valid.stride()

    block_n = 16 if n <= 16 else BLOCK_N_MAX
    # bf16 x bf16 products are exact in fp32, so the interpreter's fp32 dot gives what the bf16 tensor-core dot does.
    upcast_dot = _is_interpreted() and text_tokens.dtype == torch.bfloat16
    grid = (triton.cdiv(n, block_n), batch)
    _token_patch_max_cosine_kernel[grid](
        text_tokens,
        image_tokens,
        valid,
        out,
        n,
        m,
        d,
        *text_tokens.stride(),
        *image_tokens.stride(),
        stride_vb,
        stride_vn,
        *out.stride(),
        NORM_EPS,
        HAS_VALID=text_valid is not None,
        INVALID_VALUE=INVALID_TOKEN_VALUE,
        # IEEE fp32 dots: TF32 would cost ~1e-3 in cosine. "tf32" is the default and is ignored for 16-bit operands.
        DOT_PRECISION="ieee" if text_tokens.dtype == torch.float32 or upcast_dot else "tf32",
        UPCAST_DOT=upcast_dot,
        BLOCK_N=block_n,
        BLOCK_M=BLOCK_M,
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
    )
    return out


def _check_inputs(text_tokens: torch.Tensor, image_tokens: torch.Tensor, text_valid: torch.Tensor | None) -> None:
    """One-line ValueErrors that name the argument, before anything reaches Triton."""
    for name, tensor in (("text_tokens", text_tokens), ("image_tokens", image_tokens)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"token_patch_max_cosine: {name} must be a 3-d tensor (B, tokens, D); got {shape}")
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"token_patch_max_cosine: {name} must be float32, float16 or bfloat16; got {tensor.dtype}")
    if image_tokens.dtype != text_tokens.dtype:
        raise ValueError(
            f"token_patch_max_cosine: image_tokens dtype {image_tokens.dtype} must match text_tokens dtype {text_tokens.dtype}"
        )
    if text_tokens.shape[0] != image_tokens.shape[0] or text_tokens.shape[2] != image_tokens.shape[2]:
        raise ValueError(
            f"token_patch_max_cosine: batch and feature sizes differ: text_tokens {tuple(text_tokens.shape)} vs image_tokens {tuple(image_tokens.shape)}"
        )
    if image_tokens.shape[1] == 0:
        raise ValueError(
            "token_patch_max_cosine: image_tokens has no tokens (M = 0); the max over patches is undefined"
        )
    if image_tokens.device != text_tokens.device:
        raise ValueError(
            f"token_patch_max_cosine: image_tokens is on {image_tokens.device} but text_tokens on {text_tokens.device}"
        )
    if text_valid is not None:
        if text_valid.dtype != torch.bool or text_valid.shape != text_tokens.shape[:2]:
            raise ValueError(
                f"token_patch_max_cosine: text_valid must be a bool tensor of shape {tuple(text_tokens.shape[:2])}; got {text_valid.dtype} {tuple(text_valid.shape)}"
            )
        if text_valid.device != text_tokens.device:
            raise ValueError(
                f"token_patch_max_cosine: text_valid is on {text_valid.device} but text_tokens on {text_tokens.device}"
            )
    if text_tokens.device.type != "cuda" and not _is_interpreted():
        raise ValueError(
            f"token_patch_max_cosine: impl='triton' needs CUDA tensors (got {text_tokens.device}) or Triton's "
            "interpreter (TRITON_INTERPRET=1 set before triton is imported); use impl='auto' or 'torch' on CPU"
        )


__all__ = ["NORM_EPS", "SUPPORTED_DTYPES", "token_patch_max_cosine_triton"]
