import math

import pytest
import torch

from engine.method.losses import sdm_loss


def sdm_by_definition(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor, tau: float, eps: float) -> float:
    """docs/method.md written out with loops, in float64."""
    image = torch.nn.functional.normalize(image.double(), dim=1)
    text = torch.nn.functional.normalize(text.double(), dim=1)
    batch = len(pids)

    def direction(a: torch.Tensor, b: torch.Tensor) -> float:
        total = 0.0
        for i in range(batch):
            logits = [float(a[i] @ b[j]) / tau for j in range(batch)]
            top = max(logits)
            norm = sum(math.exp(x - top) for x in logits)
            positives = sum(1 for j in range(batch) if pids[i] == pids[j])
            for j in range(batch):
                p = math.exp(logits[j] - top) / norm
                q = (1.0 if pids[i] == pids[j] else 0.0) / positives
                total += p * (math.log(p) - math.log(q + eps))
        return total / batch

    return direction(image, text) + direction(text, image)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_definition_with_shared_pids(seed: int):
    generator = torch.Generator().manual_seed(seed)
    image, text = torch.randn(7, 5, generator=generator), torch.randn(7, 5, generator=generator)
    pids = torch.tensor([0, 1, 1, 2, 3, 3, 3])  # several captions of one image share its pid
    expected = sdm_by_definition(image, text, pids, tau=0.02, eps=1e-8)
    assert float(sdm_loss(image, text, pids)) == pytest.approx(expected, rel=1e-4)


def test_temperature_and_eps_are_used():
    generator = torch.Generator().manual_seed(3)
    image, text, pids = torch.randn(4, 6, generator=generator), torch.randn(4, 6, generator=generator), torch.arange(4)
    warm = sdm_by_definition(image, text, pids, tau=0.5, eps=1e-3)
    assert float(sdm_loss(image, text, pids, temperature=0.5, eps=1e-3)) == pytest.approx(warm, rel=1e-4)
    assert float(sdm_loss(image, text, pids, temperature=0.5)) != pytest.approx(warm, rel=1e-4)


def test_aligned_pairs_score_lower_than_shuffled_ones():
    features = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    pids = torch.arange(8)
    aligned = sdm_loss(features, features, pids)
    shuffled = sdm_loss(features, features.roll(1, dims=0), pids)
    assert float(aligned) < float(shuffled)
    assert float(aligned) > -1e-6  # a KL divergence, up to the eps inside log(q + eps)


def test_gradients_reach_both_towers():
    image = torch.randn(4, 8, requires_grad=True)
    text = torch.randn(4, 8, requires_grad=True)
    sdm_loss(image, text, torch.tensor([0, 0, 1, 2])).backward()
    assert image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0


def test_shape_errors():
    with pytest.raises(ValueError, match="equal shape"):
        sdm_loss(torch.randn(3, 4), torch.randn(3, 5), torch.arange(3))
    with pytest.raises(ValueError, match="one pid per row"):
        sdm_loss(torch.randn(3, 4), torch.randn(3, 4), torch.arange(4))
