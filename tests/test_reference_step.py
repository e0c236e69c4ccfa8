"""The rebuilt reference step at tiny size on the CPU, so that the baseline of the speed ratio cannot rot."""

import torch

from benchmarks.reference_step import (
    ReferenceStep,
    einsum_max_scores,
    synthetic_inputs,
    time_reference_steps,
)
from kernels.token_patch_max_cosine_ref import token_patch_max_cosine_ref
from tests.helpers import TINY_REFERENCE as TINY


def test_reference_steps_train_and_score_every_caption():
    result = time_reference_steps(TINY, batch=4, steps=2, device=torch.device("cpu"))
    assert result["precision"] == "fp32" and result["samples_per_s"] > 0
    assert result["scored_captions"] == 4
    assert all(torch.isfinite(torch.tensor(result["losses"])))


def test_the_text_batch_holds_both_captions_and_the_masked_half_enters_the_loss():
    runner = ReferenceStep(TINY, device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    images, ids, pids, caption_ids = synthetic_inputs(TINY, 3, generator)
    seen = []
    runner.model.module.text[0].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    before = [p.detach().clone() for p in runner.model.parameters()]
    runner.step(images, ids, runner.mask(ids, caption_ids, generator), pids, caption_ids)
    assert seen == [torch.Size([TINY.context_length, 6, TINY.text_width])]  # (N, 2B, D): T_nam and T_full together
    assert any(not torch.equal(a, b) for a, b in zip(before, runner.model.parameters(), strict=True))
    # Scored captions mask by their noise next time: the probabilities are no longer uniform.
    assert set(runner.scores) == {0, 1, 2} and all(s.shape == (TINY.context_length,) for s in runner.scores.values())


def test_einsum_max_equals_the_reference_kernel_on_valid_tokens():
    text, image = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    expected = token_patch_max_cosine_ref(text, image, torch.ones(2, 7, dtype=torch.bool))
    torch.testing.assert_close(einsum_max_scores(text, image), expected, rtol=1e-5, atol=1e-5)
