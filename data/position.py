"""Where a rank's data stream stands inside an epoch, so a checkpoint can resume it exactly.

Per DataLoader worker: the position in its sample sequence after the last batch trained on (or DONE
once its tail was consumed), plus which worker delivers next (workers deliver in turn). On the same
world size and worker count a resumed stream continues at those positions, in the same order. On
another layout the positions mean nothing; what stays meaningful is which captions were already
trained on this epoch (`seen`), so the remainder of the epoch runs without them, in a new order."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DONE = -1


@dataclass(frozen=True)
class WorkerStart:
    """What each worker of a (re)started epoch skips: physical worker j plays logical (j + offset) % W."""

    positions: tuple[int, ...]
    offset: int = 0
    seen: torch.Tensor | None = None  # (caption_id_space,) bool: captions to leave out (cross-layout resume)

    @classmethod
    def fresh(cls, workers: int) -> WorkerStart:
        return cls(tuple([0] * workers))

    def logical_worker(self, physical: int) -> int:
        return (physical + self.offset) % len(self.positions)


class DataPosition:
    """Bookkeeping of the consumed stream on one rank; its state_dict goes into the rank's checkpoint file."""

    def __init__(self, workers: int, caption_id_space: int, num_problems: int) -> None:
        self.workers, self.caption_id_space, self.num_problems = workers, caption_id_space, num_problems
        self.new_epoch()

    def new_epoch(self) -> None:
        self.positions = [0] * self.workers
        self.next_worker = 0
        self.problems = torch.zeros(self.num_problems, dtype=torch.long)  # this epoch's counts so far
        self.dropped = 0  # samples in the partial batches the workers dropped
        self.seen = torch.zeros(self.caption_id_space, dtype=torch.bool)
        self.skip: torch.Tensor | None = None

    def consume(self, item: dict) -> bool:
        """Records a loader item; True when it is a batch to train on (False for a worker's tail)."""
        worker = item["worker"]
        self.positions[worker] = item["end"]
        self.next_worker = (worker + 1) % self.workers
        self.problems += item["problems"]
        if item.get("tail"):
            self.dropped += item["dropped"]
            return False
        self.seen[item["caption_id"]] = True
        return True

    def start(self) -> WorkerStart:
        return WorkerStart(tuple(self.positions), self.next_worker, self.skip)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "positions": torch.tensor(self.positions, dtype=torch.long),
            "next_worker": torch.tensor([self.next_worker]),
            "problems": self.problems.clone(),
            "dropped": torch.tensor([self.dropped]),
            "seen": self.seen if self.skip is None else self.seen | self.skip,
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Exact continuation: same world size and worker count as the run that saved it."""
        self.positions = state["positions"].tolist()
        self.next_worker = int(state["next_worker"])
        saved = state["problems"]  # a checkpoint from before a kind was added has fewer counts, in the same order
        self.problems = torch.zeros(self.num_problems, dtype=torch.long)
        self.problems[: len(saved)] = saved[: self.num_problems]
        self.dropped = int(state["dropped"])
        self.seen = state["seen"].clone()
        self.skip = None

    def load_other_layout(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Every old rank's state -> the epoch restarts from fresh positions, leaving out the captions any
        old rank trained on. Damaged samples are never `seen`, so the new pass meets and counts all of them."""
        self.new_epoch()
        self.skip = torch.zeros(self.caption_id_space, dtype=torch.bool)
        for state in states:
            self.skip |= state["seen"]
