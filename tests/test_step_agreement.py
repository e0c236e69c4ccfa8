"""Agreements every K steps: batches held ahead count as trained only once trained, a rank short of data ends
the epoch on every rank at the fewest batches any rank had, and between agreements a step's only collectives
are the SDM gathers (DeepSpeed's gradient reduction does not pass through the collectives seam)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from data.caption_stream import PROBLEMS
from data.position import DataPosition
from data.tokenizer import EOT_ID, SOT_ID
from engine.runtime import collectives, preemption
from engine.runtime.step_agreement import LookaheadBatches

BATCH = 2
CAPTION_SPACE = 64


def loader_items(batches: int, *, rank: int = 0, tail_after: bool = True) -> list[dict]:
    """What the data loader yields to one rank: `batches` batches of BATCH from worker 0, then its tail."""
    items = []
    for index in range(batches):
        ids = torch.zeros(BATCH, 16, dtype=torch.long)
        ids[:, 0], ids[:, 1:5], ids[:, 5] = SOT_ID, torch.randint(1, 400, (BATCH, 4)), EOT_ID
        first = (rank * 16 + index) * BATCH
        items.append(
            {
                "image": torch.randn(BATCH, 3, 32, 32),
                "ids": ids,
                "pid": torch.arange(first, first + BATCH),
                "caption_id": torch.arange(first, first + BATCH),
                "worker": 0,
                "end": (index + 1) * BATCH,
                "problems": torch.zeros(len(PROBLEMS), dtype=torch.long),
            }
        )
    if tail_after:
        problems = torch.zeros(len(PROBLEMS), dtype=torch.long)
        problems[0] = 1
        items.append({"worker": 0, "end": -1, "problems": problems, "tail": True, "dropped": 1})
    return items


def test_held_batches_enter_the_data_position_only_when_trained():
    position = DataPosition(1, CAPTION_SPACE, len(PROBLEMS))
    held = LookaheadBatches(iter(loader_items(5)), position, limit=10, lookahead=4)
    agreed = held.agree(4)
    assert (agreed.batches, agreed.data_ended, agreed.stop_signals) == (4, False, None)
    assert position.positions == [0] and not position.seen.any()  # 4 fetched, none trained: a checkpoint skips none
    held.next_batch()
    assert position.positions == [BATCH] and int(position.seen.sum()) == BATCH
    held.refill()  # back to 4 in hand: batch 5 fetched, then the loader ends with its tail
    for _ in range(3):
        held.next_batch()
    agreed = held.agree(4)
    assert (agreed.batches, agreed.data_ended) == (1, True)
    held.next_batch()
    held.record_trailing_tails()
    assert position.positions == [-1] and int(position.problems[0]) == 1 and position.dropped == 1


def test_leftovers_of_an_epoch_cut_short_are_counted_but_not_trained():
    position = DataPosition(1, CAPTION_SPACE, len(PROBLEMS))
    held = LookaheadBatches(iter(loader_items(6)), position, limit=10, lookahead=4)
    held.agree(4)
    held.next_batch()
    assert held.record_leftovers() == 3
    assert int(position.seen.sum()) == BATCH and position.positions == [BATCH]  # only the trained batch


def test_never_fetches_past_the_epoch_and_a_stop_signal_is_agreed(monkeypatch):
    position = DataPosition(1, CAPTION_SPACE, len(PROBLEMS))
    items = iter(loader_items(8, tail_after=False))
    held = LookaheadBatches(items, position, limit=3, lookahead=4)
    monkeypatch.setattr(preemption, "_received", ["SIGTERM"])
    agreed = held.agree(3)
    assert (agreed.batches, agreed.data_ended) == (3, False)
    assert agreed.stop_signals == "SIGTERM on 1 of 1 ranks"
    assert len(list(items)) == 5  # the loader still holds the 5 batches beyond the epoch's 3


# ---------------------------------------------------------------------------------------------------------------
# run_epoch itself on 2 real gloo ranks with a real DeepSpeed engine (tiny model); only the data loader is replaced
# by each rank's list of batches, so that one rank can run short between agreements.
# ---------------------------------------------------------------------------------------------------------------

SEAM = ("gather_with_grad", "gather_no_grad", "agree", "all_reduce_sum", "exchange_rows", "barrier")


class ListLoader:
    def __init__(self, items: list[dict]) -> None:
        self.items, self.worker_init_fn = items, None

    def __iter__(self):
        return iter(self.items)


def _rank(rank: int, world: int, port: int, out: str, lengths: list[int], agree_every: int, epoch_batches: int):
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_SIZE=str(world), MASTER_ADDR="127.0.0.1"
    )
    os.environ["MASTER_PORT"] = str(port)
    import deepspeed

    from engine.config import Config, NamConfig, TrainConfig
    from engine.method.nam import TokenMasker
    from engine.method.noise_table import ShardedNoiseTable
    from engine.model import build_model
    from engine.model.training_model import parameter_groups
    from engine.runtime import trainer
    from engine.runtime.deepspeed_setup import deepspeed_config, init_distributed, shutdown_distributed
    from engine.runtime.schedule import build_optimizer, build_scheduler
    from tests.helpers import tiny_model_config

    init_distributed()
    config = Config(
        model=tiny_model_config(),
        nam=NamConfig(tap_layer=1),
        train=TrainConfig(batch_size=BATCH, epochs=1, agree_every_steps=agree_every, log_every_steps=1000),
    )
    torch.manual_seed(0)
    model = build_model(config.model, tap_layer=1)
    optimizer = build_optimizer(parameter_groups(model, config.optim), config.optim)
    scheduler = build_scheduler(optimizer, config.optim, epochs=1, total_steps=epoch_batches)
    ds_engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(config, world_size=world)
    )
    calls: list[str] = []
    for name in SEAM:
        original = getattr(collectives, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(collectives, name, counted)
    train_step = trainer.train_step

    def marked_step(*args, **kwargs):
        calls.append("step")
        return train_step(*args, **kwargs)

    trainer.train_step = marked_step
    trainer.make_loader = lambda stream, num_workers: ListLoader(loader_items(lengths[rank], rank=rank))
    position = DataPosition(1, 1024, len(PROBLEMS))
    state = trainer.TrainState(world_size=world)
    written = []
    trainer.run_epoch(
        ds_engine,
        None,
        config,
        TokenMasker(config.nam, ShardedNoiseTable(1024, config.model.context_length)),
        state,
        position,
        scheduler=scheduler,
        batches_per_epoch=epoch_batches,
        log=SimpleNamespace(write=written.append),
        checkpoint=lambda tag: None,
    )
    result = {"calls": calls, "batches_done": state.batches_done, "seen": int(position.seen.sum()), "log": written}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    shutdown_distributed(clean=True)


def _run_two_ranks(tmp_path: Path, lengths: list[int], *, agree_every: int, epoch_batches: int) -> list[dict]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.start_processes(
        _rank,
        args=(2, port, str(tmp_path), lengths, agree_every, epoch_batches),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    for _ in range(600):  # a hang fails the test after 10 minutes instead of blocking the suite
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail("the ranks did not finish: a hang")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.multirank
def test_a_rank_short_of_data_between_agreements_ends_the_epoch_on_both_with_only_gathers_per_step(tmp_path):
    """Rank 1's data ends after 6 of the manifest's 10 batches, two steps into the second block of 4: both ranks
    train 6 batches (the fewest any rank had: none lost, no hang). Agreements come before steps 0 and 4 only; every
    step in between calls the seam only for SDM's three gathers."""
    results = _run_two_ranks(tmp_path, [10, 6], agree_every=4, epoch_batches=10)
    for rank, result in enumerate(results):
        assert result["batches_done"] == 6, rank
        assert result["seen"] == 6 * BATCH  # trained batches recorded; rank 0's held-back batches 7-8 not trained
        steps = " ".join(result["calls"]).split("step")
        before_first, per_step = steps[0].split(), [s.split() for s in steps[1:]]
        assert before_first == ["agree"]
        gathers = ["gather_with_grad", "gather_with_grad", "gather_no_grad"]
        assert per_step[:3] == [gathers] * 3
        assert per_step[3] == [*gathers, "agree"]  # the agreement before step 4
        assert per_step[4] == gathers
        assert per_step[5] == [*gathers, "all_reduce_sum"]  # the last step, then the epoch's loss log
        assert result["calls"].count("agree") == 2
    losses = [r["loss"] for r in results[0]["log"] if "loss" in r]
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
