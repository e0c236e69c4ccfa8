"""The ranks agree once every K optimizer steps, not at every step.

Two questions need every rank's answer: does every rank still have a batch (damaged data can leave one rank
short of the manifest's count, and a rank that stops stepping would leave the others waiting in the SDM
gathers), did any rank get a stop signal (engine/runtime/preemption.py), and did any rank's remote store stay down
(data/object_store.py). Both are answered by one all-gather of a
few CPU integers on the gloo control group (`collectives.agree`), every `train.agree_every_steps` optimizer
steps; between agreements a step makes no collective of its own beyond the SDM gathers and DeepSpeed's
gradient reduction, and no host sync.

To answer "I have the next K batches" a rank must hold them: it keeps up to K x grad_accum batches fetched
ahead of training, refilled one batch per step. An agreement settles how many batches every rank trains before
the next one: the fewest that any rank holds. When that is fewer than asked, a rank's data has ended, and the
epoch ends on every rank after those batches: no rank waits for another, and every batch that all ranks could
train is trained, as with an agreement at every step. A batch counts in the data position (what a checkpoint
resumes from) only once it is trained, so the batches held ahead are never skipped by a resume.

The cost of holding batches ahead is host memory: K x grad_accum batches (64 x 3 x 384 x 128 fp32 images are
38 MB, so 600 MB per rank at the default K = 16). With the default K an agreement costing up to 1.5 ms stays under
0.5% of the time of 16 paper-size steps at the 45% MFU goal on an H200 (docs/benchmarks.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from data.position import DataPosition
from engine.runtime import collectives, preemption


@dataclass(frozen=True)
class Agreement:
    batches: int  # every rank trains exactly this many batches before the next agreement
    asked: int  # how many were asked for: fewer agreed means a rank's data ended and the epoch ends after them
    stop_signals: str | None  # a stop signal any rank got ("SIGTERM on 1 of 2 ranks"): checkpoint and stop now
    halted_rank: int | None = None  # the first rank whose remote shards could not be fetched: checkpoint and stop now

    @property
    def data_ended(self) -> bool:
        return self.batches < self.asked


class LookaheadBatches:
    """A rank's batches of one epoch, fetched up to `lookahead` ahead of training and agreed on in blocks."""

    def __init__(self, items: Iterator[dict], position: DataPosition, *, limit: int, lookahead: int) -> None:
        self.items, self.position = items, position
        self.limit = limit  # batches this epoch may still train: never fetch beyond them
        self.lookahead = lookahead
        self.held: deque[list[dict]] = deque()  # loader items up to and including one batch (a worker's tails first)
        self.trailing: list[dict] = []  # tails after the last batch, once the loader is done
        self.fetched = 0
        self.loader_done = False
        self.halted: str | None = None  # why this rank's data stopped: the remote store stayed down

    def _fetch_one(self) -> None:
        group = []
        for item in self.items:
            if item.get("halt"):  # the items of this group are not recorded: a resume delivers them again
                self.halted, self.loader_done = item["halt"], True
                return
            group.append(item)
            if not item.get("tail"):  # the same test as DataPosition.consume
                self.held.append(group)
                self.fetched += 1
                return
        self.trailing, self.loader_done = group, True

    def _top_up(self, count: int) -> None:
        while len(self.held) < count and not self.loader_done and self.fetched < self.limit:
            self._fetch_one()

    def refill(self) -> None:
        """Keeps `lookahead` batches in hand: one fetch per trained batch in the steady state."""
        self._top_up(self.lookahead)

    def agree(self, asked: int, *, before: Callable[[], None] | None = None) -> Agreement:
        """A collective: how many of the next `asked` batches every rank holds, any rank's stop signal, and the first
        rank whose data halted."""
        self._top_up(asked)
        if before is not None:
            before()
        rows = collectives.agree([min(len(self.held), asked), int(self.halted is not None), *preemption.local_votes()])
        votes = [sum(column) for column in zip(*(row[2:] for row in rows), strict=True)]
        halted = next((rank for rank, row in enumerate(rows) if row[1]), None)
        return Agreement(min(row[0] for row in rows), asked, preemption.describe_votes(votes), halted)

    def next_batch(self) -> dict:
        """The next held batch, now recorded in the data position (with the tails delivered before it)."""
        group = self.held.popleft()
        for item in group:
            self.position.consume(item)
        return group[-1]

    def record_leftovers(self) -> int:
        """At an epoch cut short by another rank's data: adds the damaged-sample counts that the batches fetched but
        not trained carry, so that the epoch's counts stay complete, without marking those batches trained.
        Returns how many batches were left untrained here."""
        untrained = len(self.held)
        while self.held:
            for item in self.held.popleft():
                if item.get("tail"):
                    self.position.consume(item)
                else:
                    self.position.problems += item["problems"]
        self.record_trailing_tails()
        return untrained

    def record_trailing_tails(self) -> None:
        """At the natural end of this rank's data: the tails after its last batch."""
        for item in self.trailing:
            self.position.consume(item)
        self.trailing = []
