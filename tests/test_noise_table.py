"""The sharded noise table: one process, and 2-3 real gloo processes whose captions move between ranks."""

import pytest
import torch

from engine.method.noise_table import LEVELS, NOISE_RANGE, UNSCORED, ShardedNoiseTable, dequantise, quantise
from tests.helpers import run_on_ranks

SPACE, TOKENS, EPOCHS = 60, 6, 4


def scores_of(epoch: int, ids: torch.Tensor) -> torch.Tensor:
    """The noise a caption gets when scored in `epoch`: distinct per (epoch, id, token)."""
    tokens = torch.arange(TOKENS)
    return ((ids.unsqueeze(1) * 7 + tokens * 3 + epoch * 11) % 50).float() / 25.0  # in [0, 2)


def valid_of(ids: torch.Tensor) -> torch.Tensor:
    """Captions have 1..TOKENS-2 valid tokens after SOT, like real ones."""
    positions = torch.arange(TOKENS)
    return (positions > 0) & (positions <= 1 + ids.unsqueeze(1) % (TOKENS - 2))


def assignment(epoch: int, world: int) -> list[torch.Tensor]:
    """Which captions each rank processes in an epoch: a fresh permutation, and some captions skipped."""
    order = torch.randperm(SPACE, generator=torch.Generator().manual_seed(epoch))
    kept = order[: SPACE - 7 * (epoch % 2)]
    return [kept[r::world] for r in range(world)]


def test_quantisation_steps_are_below_one_percent_of_the_range():
    noise = torch.linspace(0, NOISE_RANGE, 1001)
    assert (dequantise(quantise(noise)) - noise).abs().max() <= NOISE_RANGE / LEVELS / 2 + 1e-6
    assert int(quantise(torch.tensor([5.0, -1.0])).max()) == LEVELS  # clamped, never the UNSCORED code
    assert UNSCORED > LEVELS


def test_one_process_keeps_each_captions_last_scoring():
    table = ShardedNoiseTable(SPACE, TOKENS)
    ids = torch.tensor([3, 7, 11])
    table.record(ids, scores_of(0, ids), valid_of(ids))
    _, known = table.lookup(ids, valid_of(ids))
    assert not known.any()  # scores of this epoch are read from the next one on
    table.end_epoch(torch.arange(SPACE))
    noise, known = table.lookup(torch.tensor([3, 7, 11, 5]), valid_of(torch.tensor([3, 7, 11, 5])))
    assert known.tolist() == [True, True, True, False]
    expected = dequantise(quantise(scores_of(0, ids))).masked_fill(~valid_of(ids), 0.0)
    torch.testing.assert_close(noise[:3], expected)
    assert table.owned.element_size() * table.owned.shape[1] == TOKENS  # the memory it is sized by: a byte a token
    with pytest.raises(IndexError, match="out of range"):
        table.lookup(torch.tensor([SPACE]), valid_of(torch.tensor([0])))


def single_process_expectation(epoch: int) -> dict[int, torch.Tensor]:
    """What one process that saw every epoch up to `epoch` holds: each caption's latest scores."""
    latest: dict[int, torch.Tensor] = {}
    for past in range(epoch):
        for ids in assignment(past, world=1):
            for caption, row, valid in zip(ids.tolist(), scores_of(past, ids), valid_of(ids), strict=True):
                latest[caption] = dequantise(quantise(row)).masked_fill(~valid, 0.0)
    return latest


def play_epochs(rank: int, world: int) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Each epoch: read the scores of this epoch's captions, score them, then exchange."""
    table = ShardedNoiseTable(SPACE, TOKENS)
    reads = []
    for epoch in range(EPOCHS):
        mine = assignment(epoch, world)[rank]
        noise, known = table.lookup(mine, valid_of(mine))
        reads.append((mine.tolist(), noise, known))
        table.record(mine, scores_of(epoch, mine), valid_of(mine))
        table.end_epoch(assignment(epoch + 1, world)[rank])
    return reads


@pytest.mark.multirank
@pytest.mark.parametrize("world", [2, 3])
def test_every_score_a_rank_reads_equals_a_single_process_view(world: int):
    for rank_reads in run_on_ranks(world, play_epochs):
        for epoch, (ids, noise, known) in enumerate(rank_reads):
            expected = single_process_expectation(epoch)
            for caption, row, is_known in zip(ids, noise, known, strict=True):
                assert bool(is_known) == (caption in expected), f"epoch {epoch} caption {caption}"
                if caption in expected:
                    torch.testing.assert_close(row, expected[caption], msg=f"epoch {epoch} caption {caption}")


def save_mid_epoch(rank: int, world: int) -> dict[str, torch.Tensor]:
    table = ShardedNoiseTable(SPACE, TOKENS)
    for epoch in range(2):
        mine = assignment(epoch, world)[rank]
        table.record(mine, scores_of(epoch, mine), valid_of(mine))
        table.end_epoch(assignment(epoch + 1, world)[rank])
    half = assignment(2, world)[rank][:5]
    table.record(half, scores_of(2, half), valid_of(half))  # a checkpoint mid-epoch 2
    return table.state_dict()


def restore_and_read(rank: int, world: int, states: list[dict], same_world: bool):
    table = ShardedNoiseTable(SPACE, TOKENS)
    if same_world:
        table.load_state_dict(states[rank])
    else:
        table.load_owned_from(states)
        table.refresh(assignment(2, world)[rank])
    mine = assignment(2, world)[rank]
    return mine.tolist(), *table.lookup(mine, valid_of(mine)), sum(len(p) for p in table.pending_ids)


@pytest.mark.multirank
@pytest.mark.parametrize(("saved_on", "restored_on"), [(2, 2), (2, 3), (3, 2)])
def test_checkpointed_table_restores_on_the_same_and_other_world_sizes(saved_on: int, restored_on: int):
    states = run_on_ranks(saved_on, save_mid_epoch)
    expected = single_process_expectation(2)
    results = run_on_ranks(restored_on, restore_and_read, states, saved_on == restored_on)
    for rank, (ids, noise, known, pending) in enumerate(results):
        assert known.all() and len(ids) > 0
        for caption, row in zip(ids, noise, strict=True):
            torch.testing.assert_close(row, expected[caption], msg=f"caption {caption}")
        # Same world: the half epoch's scores survive; another world restarts the epoch without them.
        assert pending == (len(assignment(2, saved_on)[rank][:5]) if saved_on == restored_on else 0)


def test_restoring_onto_another_layout_is_refused():
    state = ShardedNoiseTable(SPACE, TOKENS).state_dict()
    with pytest.raises(ValueError, match="does not match"):
        ShardedNoiseTable(SPACE + 1, TOKENS).load_state_dict(state)
