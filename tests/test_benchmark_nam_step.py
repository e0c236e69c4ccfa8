"""The NAM step benchmark on a tiny model: both modes step, and NAM hands the next step centred probabilities."""

import torch

from benchmarks.benchmark_nam_step import MASK_PROB, StepRunner, time_steps
from engine.method.nam import valid_token_mask
from tests.helpers import tiny_model_config


def test_both_modes_are_timed_for_each_step():
    seconds = time_steps(cfg=tiny_model_config(context_length=77), batch_size=3, steps=2, tap_layer=1)
    assert sorted(seconds) == ["em", "nam"]
    assert all(len(times) == 2 and min(times) > 0 for times in seconds.values())


def test_a_nam_step_trains_and_turns_the_noise_into_next_probabilities():
    runner = StepRunner.build("nam", cfg=tiny_model_config(context_length=77), batch_size=3, tap_layer=1)
    before = [p.detach().clone() for p in runner.model.parameters()]
    runner.timed_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, runner.model.parameters(), strict=True))
    valid = valid_token_mask(runner.batch[1])
    probabilities = runner.probabilities
    assert torch.all(probabilities[~valid] == 0) and torch.all((probabilities >= 0) & (probabilities <= 1))
    assert not torch.allclose(probabilities[valid], torch.full_like(probabilities[valid], MASK_PROB))


def test_an_em_step_keeps_uniform_probabilities():
    runner = StepRunner.build("em", cfg=tiny_model_config(context_length=77), batch_size=3, tap_layer=1)
    runner.timed_step()
    valid = valid_token_mask(runner.batch[1])
    assert torch.all(runner.probabilities == valid.float() * MASK_PROB)
