import pytest
import torch

from kernels import INVALID_TOKEN_VALUE, token_patch_max_cosine


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
