import subprocess
import sys

import pytest
import torch

from engine.config import ConfigError, NamConfig
from kernels import token_patch_max_cosine as dispatcher
from kernels import token_patch_max_cosine_triton as triton_module
from kernels.token_patch_max_cosine import (
    INVALID_TOKEN_VALUE,
    choose_implementation,
    token_patch_max_cosine,
    token_patch_max_cosine_ref,
)
from kernels.token_patch_max_cosine_triton import (
    BLOCK_M,
    interpreter_runs_with_this_numpy,
    token_patch_max_cosine_triton,
)
from tests.helpers import REPO, SHAPES, TOLERANCE, assert_matches, correlated_tokens, random_valid


def brute_force(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    out = torch.empty(text.shape[:2])
    for b in range(text.shape[0]):
        for i in range(text.shape[1]):
            out[b, i] = max(
                float(torch.nn.functional.cosine_similarity(text[b, i], image[b, j], dim=0))
                for j in range(image.shape[1])
            )
    return out


@pytest.mark.parametrize(("batch", "n", "m", "d"), [(1, 5, 3, 4), (2, 7, 12, 16), (3, 1, 1, 8)])
def test_reference_equals_brute_force(batch: int, n: int, m: int, d: int):
    generator = torch.Generator().manual_seed(n * m)
    text, image = torch.randn(batch, n, d, generator=generator), torch.randn(batch, m, d, generator=generator)
    torch.testing.assert_close(token_patch_max_cosine(text, image), brute_force(text, image), rtol=1e-5, atol=1e-5)


def test_scale_invariant_and_invalid_tokens_get_the_defined_value():
    generator = torch.Generator().manual_seed(0)
    text, image = torch.randn(2, 6, 8, generator=generator), torch.randn(2, 4, 8, generator=generator)
    valid = torch.tensor([[True] * 4 + [False] * 2, [False] * 6])
    out = token_patch_max_cosine(text * 5.0, image * 0.1, valid)
    torch.testing.assert_close(out[valid], brute_force(text, image)[valid], rtol=1e-5, atol=1e-5)
    assert (out[~valid] == INVALID_TOKEN_VALUE).all()
    assert out.dtype == torch.float32


def test_bf16_inputs_give_fp32_output_close_to_fp32():
    generator = torch.Generator().manual_seed(1)
    text, image = torch.randn(2, 77, 64, generator=generator), torch.randn(2, 192, 64, generator=generator)
    out = token_patch_max_cosine(text.bfloat16(), image.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, token_patch_max_cosine(text, image), rtol=0, atol=2e-2)


@pytest.mark.parametrize(
    ("text_shape", "image_shape", "valid_shape", "message"),
    [
        ((2, 3), (2, 4, 8), None, r"needs \(B, N, D\)"),
        ((2, 3, 8), (3, 4, 8), None, "batch and feature sizes differ"),
        ((2, 3, 8), (2, 4, 7), None, "batch and feature sizes differ"),
        ((2, 3, 8), (2, 4, 8), (2, 4), "text_valid"),
    ],
)
def test_bad_shapes_are_named(text_shape, image_shape, valid_shape, message):
    valid = torch.ones(valid_shape, dtype=torch.bool) if valid_shape else None
    with pytest.raises(ValueError, match=message):
        token_patch_max_cosine(torch.randn(text_shape), torch.randn(image_shape), valid)


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="unknown token_patch_max_cosine implementation 'cuda'"):
        token_patch_max_cosine(torch.randn(1, 2, 4), torch.randn(1, 3, 4), impl="cuda")


# ---------------------------------------------------------------------------------------------------------------
# The Triton kernel against the reference. Without a GPU this runs the kernel itself through Triton's interpreter
# (tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported), so nothing here is skipped, except under a
# Triton and NumPy whose interpreter cannot run (below).
# ---------------------------------------------------------------------------------------------------------------


# Absolute tolerance on cosines, per input dtype, against the reference on the same inputs: fp32 covers summation
# order; the 16-bit slack is what rounding the inputs themselves costs against fp32 (checked below as well), so the
# kernel is allowed no more error than choosing the dtype already brings.
# Triton 3.6's interpreter cannot run under NumPy 2.4+ (kernels/token_patch_max_cosine_triton.py says why); the
# floor environment has both, and the lock's environment runs these tests.
runs_the_kernel = pytest.mark.skipif(
    not torch.cuda.is_available() and not interpreter_runs_with_this_numpy(),
    reason="Triton < 3.7's interpreter with NumPy >= 2.4",
)


def run_triton(text, image, valid=None) -> torch.Tensor:
    return token_patch_max_cosine(text, image, valid, impl="triton")


@pytest.mark.slow
@pytest.mark.parametrize(("batch", "n", "m", "d"), SHAPES, ids=lambda v: str(v))
@runs_the_kernel
def test_triton_matches_reference_at_real_and_block_boundary_shapes(batch: int, n: int, m: int, d: int):
    text, image = correlated_tokens(batch, n, m, d, seed=n + m + d)
    valid = random_valid(batch, n, seed=batch)
    out = run_triton(text, image, valid)
    assert out.shape == (batch, n) and out.dtype == torch.float32
    expected = token_patch_max_cosine_ref(text, image, valid)
    assert_matches(out, expected, atol=TOLERANCE[torch.float32], what=f"shape {(batch, n, m, d)}")
    assert_matches(run_triton(text, image), token_patch_max_cosine_ref(text, image), atol=1e-5, what="no mask")


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@runs_the_kernel
def test_triton_each_dtype_within_its_tolerance(dtype: torch.dtype):
    text, image = correlated_tokens(2, 77, 192, 512, seed=7)
    valid = random_valid(2, 77, seed=7)
    low_text, low_image = text.to(dtype), image.to(dtype)
    out = run_triton(low_text, low_image, valid)
    assert out.dtype == torch.float32
    tolerance = TOLERANCE[dtype]
    assert_matches(out, token_patch_max_cosine_ref(low_text, low_image, valid), atol=tolerance, what=f"{dtype}")
    assert_matches(out, token_patch_max_cosine_ref(text, image, valid), atol=tolerance, what=f"{dtype} vs fp32 inputs")


@runs_the_kernel
def test_triton_all_padding_row_and_invalid_tokens_get_the_defined_value():
    text, image = correlated_tokens(3, 77, 192, 64, seed=3)
    valid = random_valid(3, 77, seed=3)
    valid[1] = False  # a caption that is all padding
    out = run_triton(text, image, valid)
    assert (out[~valid] == INVALID_TOKEN_VALUE).all()
    assert_matches(out, token_patch_max_cosine_ref(text, image, valid), atol=1e-5, what="all-padding row")


@runs_the_kernel
def test_triton_negative_maxima_are_not_lifted_by_padded_columns():
    """Every cosine is about -1; padded image columns of the last M block must not win with a 0."""
    generator = torch.Generator().manual_seed(5)
    direction = torch.randn(1, 1, 40, generator=generator)
    image = direction.expand(2, BLOCK_M + 1, 40) * torch.rand(2, BLOCK_M + 1, 1, generator=generator).add(0.5)
    text = -direction.expand(2, 5, 40) + 0.01 * torch.randn(2, 5, 40, generator=generator)
    out = run_triton(text, image)
    assert (out < -0.99).all(), out
    assert_matches(out, token_patch_max_cosine_ref(text, image), atol=1e-5, what="negative maxima")


@runs_the_kernel
def test_triton_zero_vectors_score_zero_like_f_normalize():
    text, image = correlated_tokens(1, 4, 6, 32, seed=4)
    text[0, 1] = 0.0
    image[0, 2] = 0.0
    out = run_triton(text, image)
    assert out[0, 1] == 0.0
    assert_matches(out, token_patch_max_cosine_ref(text, image), atol=1e-5, what="zero vectors")


@runs_the_kernel
def test_triton_reads_strided_views_and_copies_other_layouts():
    text, image = correlated_tokens(2, 78, 193, 96, seed=6)
    valid = random_valid(2, 2 * 77, seed=6)
    cases = {
        "sliced (CLS dropped; unit-stride features, read in place)": (text[:, 1:], image[:, 1:], valid[:, ::2]),
        "transposed feature dim (copied once)": (
            text[:, 1:].transpose(1, 2).contiguous().transpose(1, 2),
            image[:, 1:].transpose(1, 2).contiguous().transpose(1, 2),
            valid[:, ::2],
        ),
    }
    for what, (t, i, v) in cases.items():
        assert not t.is_contiguous() and not i.is_contiguous() and not v.is_contiguous()
        assert_matches(run_triton(t, i, v), token_patch_max_cosine_ref(t, i, v), atol=1e-5, what=what)


@pytest.mark.parametrize(("batch", "n"), [(0, 77), (2, 0)])
def test_triton_empty_batch_or_caption_gives_an_empty_result(batch: int, n: int):
    out = run_triton(torch.randn(batch, n, 8), torch.randn(batch, 3, 8))
    assert out.shape == (batch, n) and out.dtype == torch.float32


@pytest.mark.parametrize(
    ("text", "image", "valid", "message"),
    [
        (torch.randn(1, 2, 4).double(), torch.randn(1, 3, 4).double(), None, "text_tokens must be float32, float16"),
        (torch.randn(1, 2, 4), torch.randint(0, 3, (1, 3, 4)), None, "image_tokens must be float32, float16"),
        (torch.randn(1, 2, 4), torch.randn(1, 3, 4).half(), None, "image_tokens dtype torch.float16 must match"),
        (torch.randn(1, 2, 4), torch.randn(1, 0, 4), None, r"image_tokens has no tokens \(M = 0\)"),
        (torch.randn(1, 2, 4), torch.randn(1, 3, 4, device="meta"), None, "image_tokens is on meta"),
        (torch.randn(1, 2, 4), torch.randn(1, 3, 4), torch.ones(1, 2, dtype=torch.int64), "text_valid must be a bool"),
        (torch.randn(1, 2, 4), torch.randn(1, 3, 4), torch.ones(1, 3, dtype=torch.bool), "text_valid must be a bool"),
        (torch.randn(2, 4), torch.randn(1, 3, 4), None, r"text_tokens must be a 3-d tensor"),
        (torch.randn(1, 2, 4), torch.randn(2, 3, 4), None, "batch and feature sizes differ"),
    ],
)
def test_triton_launcher_names_the_bad_argument(text, image, valid, message):
    with pytest.raises(ValueError, match=message):
        token_patch_max_cosine_triton(text, image, valid)


def test_triton_on_cpu_without_the_interpreter_says_what_it_needs(monkeypatch):
    monkeypatch.setattr(triton_module, "_is_interpreted", lambda: False)
    with pytest.raises(ValueError, match=r"impl='triton' needs CUDA tensors \(got cpu\) or Triton's interpreter"):
        run_triton(torch.randn(1, 2, 4), torch.randn(1, 3, 4))


def test_an_interpreter_that_cannot_run_is_named_before_the_launch(monkeypatch):
    monkeypatch.setattr(triton_module, "interpreter_runs_with_this_numpy", lambda: False)
    text, image = correlated_tokens(1, 3, 4, 8, seed=0)
    with pytest.raises(ValueError, match=r"interpreter cannot run with NumPy .* needs Triton 3.7\+ or NumPy < 2.4"):
        run_triton(text, image)


def test_auto_picks_torch_on_cpu_and_triton_on_cuda(monkeypatch):
    assert choose_implementation("auto", torch.device("cpu")) == "torch"
    assert choose_implementation("auto", torch.device("cuda", 0)) == "triton"
    assert choose_implementation("triton", torch.device("cpu")) == "triton"  # explicit choices are kept

    def refuse(*args):
        raise AssertionError("auto on CPU must not reach the Triton launcher")

    monkeypatch.setattr(dispatcher, "token_patch_max_cosine_triton", refuse)
    text, image = correlated_tokens(2, 5, 7, 16, seed=8)
    assert torch.equal(token_patch_max_cosine(text, image, impl="auto"), token_patch_max_cosine_ref(text, image))


def test_config_selects_the_implementation_explicitly(monkeypatch):
    """nam.kernel reaches the dispatcher as it is written: triton runs the Triton launcher even on CPU, torch and
    auto (on CPU) the reference; nothing is chosen by what happens to be importable."""
    assert NamConfig().kernel == "auto"
    launched = []

    def triton_stand_in(text, image, *args, **kwargs):
        launched.append(text.shape)
        return token_patch_max_cosine_ref(text, image)

    monkeypatch.setattr(dispatcher, "token_patch_max_cosine_triton", triton_stand_in)
    text, image = correlated_tokens(2, 5, 7, 16, seed=3)
    results = {k: token_patch_max_cosine(text, image, impl=NamConfig(kernel=k).kernel) for k in ("auto", "torch")}
    assert not launched
    token_patch_max_cosine(text, image, impl=NamConfig(kernel="triton").kernel)
    assert launched == [text.shape]
    assert torch.equal(results["auto"], results["torch"])
    with pytest.raises(ConfigError, match="nam.kernel must be one of auto, triton, torch"):
        NamConfig(kernel="cuda")


@pytest.mark.slow
def test_kernels_import_and_run_the_reference_without_the_triton_package():
    """An install without triton still imports kernels and runs auto/torch; impl='triton' says what is missing."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` fail as if it were not installed
        "import torch\n"
        "from kernels.token_patch_max_cosine import token_patch_max_cosine\n"
        "text, image = torch.randn(1, 3, 8), torch.randn(1, 4, 8)\n"
        "assert token_patch_max_cosine(text, image, impl='auto').shape == (1, 3)\n"
        "try:\n"
        "    token_patch_max_cosine(text, image, impl='triton')\n"
        "except ValueError as error:\n"
        "    assert 'needs the triton package' in str(error), error\n"
        "else:\n"
        "    raise AssertionError('impl=triton without triton did not fail')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
