"""What only a GPU can check: the compiled Triton kernel (not its interpreter) against the reference, in every
supported dtype, at the real shapes and at block-boundary shapes. Skipped without CUDA; benchmarks/gpu_check.sh
runs this file on a GPU machine."""

import pytest
import torch

from kernels.token_patch_max_cosine import token_patch_max_cosine, token_patch_max_cosine_ref
from tests.helpers import SHAPES, TOLERANCE, assert_matches, correlated_tokens, random_valid

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA_SHAPES = [(64, 77, 192, 512), *SHAPES]  # a paper-size per-GPU batch first


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize(("batch", "n", "m", "d"), CUDA_SHAPES, ids=lambda v: str(v))
def test_compiled_kernel_matches_the_reference(batch: int, n: int, m: int, d: int, dtype: torch.dtype):
    text, image = correlated_tokens(batch, n, m, d, seed=n + m + d)
    valid = random_valid(batch, n, seed=batch)
    text, image, valid = text.to("cuda", dtype), image.to("cuda", dtype), valid.to("cuda")
    out = token_patch_max_cosine(text, image, valid, impl="triton")
    assert out.device.type == "cuda" and out.dtype == torch.float32 and out.shape == (batch, n)
    expected = token_patch_max_cosine_ref(text, image, valid)
    assert_matches(out.cpu(), expected.cpu(), atol=TOLERANCE[dtype], what=f"{dtype} {(batch, n, m, d)}")


def test_steady_state_steps_make_no_host_sync(tmp_path):
    """tests/cuda_sync_probe.py: 3 steps after 3 warmup steps under set_sync_debug_mode("error"), bf16, NAM on;
    only DeepSpeed's optimizer step (its overflow check reads the gradient norm) runs outside the check."""
    import subprocess
    import sys

    from tests.helpers import REPO

    result = subprocess.run(
        [sys.executable, "-m", "tests.cuda_sync_probe"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sync-free steps: 3, captions scored: 48" in result.stdout
