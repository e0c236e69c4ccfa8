"""SDM over ranks: gathering with gradient must equal one process on the concatenated batch."""

import pytest
import torch

from engine.method.losses import sdm_loss
from engine.runtime import collectives
from tests.helpers import run_on_ranks

GLOBAL_BATCH, IN_DIM, EMBED = 8, 6, 5


def towers() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return torch.nn.Linear(IN_DIM, EMBED), torch.nn.Linear(IN_DIM, EMBED)


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, IN_DIM, generator=generator)
    texts = torch.randn(GLOBAL_BATCH, IN_DIM, generator=generator)
    pids = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])  # positives that straddle the rank boundary
    return images, texts, pids


def loss_and_grads(image_tower, text_tower, images, texts, pids) -> tuple[float, list[torch.Tensor]]:
    loss = sdm_loss(
        collectives.gather_with_grad(image_tower(images)),
        collectives.gather_with_grad(text_tower(texts)),
        collectives.gather_no_grad(pids),
    )
    loss.backward()
    grads = [p.grad for p in [*image_tower.parameters(), *text_tower.parameters()]]
    return float(loss.detach()), grads


def one_rank_of_many(rank: int, world: int):
    images, texts, pids = global_batch()
    share = GLOBAL_BATCH // world
    rows = slice(rank * share, (rank + 1) * share)
    loss, grads = loss_and_grads(*towers(), images[rows], texts[rows], pids[rows])
    for grad in grads:  # what DeepSpeed's data-parallel gradient averaging does
        torch.distributed.all_reduce(grad)
        grad /= world
    return loss, [g.clone() for g in grads]


@pytest.mark.multirank
def test_two_ranks_equal_one_process_on_the_global_batch():
    expected_loss, expected_grads = loss_and_grads(*towers(), *global_batch())
    for loss, grads in run_on_ranks(2, one_rank_of_many):
        assert loss == pytest.approx(expected_loss, rel=1e-5)
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.multirank
def test_without_the_gather_gradients_differ():
    """The test above could fail: a local-only loss gives other gradients."""
    expected_loss, expected_grads = loss_and_grads(*towers(), *global_batch())
    images, texts, pids = global_batch()
    image_tower, text_tower = towers()
    loss = sdm_loss(image_tower(images[:4]), text_tower(texts[:4]), pids[:4])
    assert float(loss.detach()) != pytest.approx(expected_loss, rel=1e-3)
