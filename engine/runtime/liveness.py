"""Naming the rank that is gone when one dies.

A rank killed by SIGKILL (or the OOM killer, or a dead node) shows up on the survivors as a failed
collective: at once with gloo ("Connection reset by peer"), after train.collective_timeout_s with nccl or
a node that vanished without closing its sockets. Neither error says which rank is missing, and the
deepspeed launcher's own message quotes the command of the last rank it started, whichever died.

So every rank runs a heartbeat thread over its own connection to the rendezvous store (the TCPStore at
MASTER_ADDR:MASTER_PORT, served by rank 0's process): once a second it adds 1 to its own counter and
reads everyone's. A rank whose counter stands still for SILENCE_S, without having said goodbye, is lost;
the lowest surviving rank prints one line naming it (host and pid), whether or not its own main thread
has noticed yet. When the store stops answering, rank 0 is the one gone. A rank that stops on its own
(done, a user error, a crash with its own traceback) says goodbye first, so it is never reported.

The thread also keeps the collective timeout when the backend does not: gloo was seen waiting forever on a
stopped peer despite its timeout. A rank whose peer stays silent for train.collective_timeout_s past the
verdict exits with status 1, so the launcher (or srun) ends the job instead of letting it hang.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from datetime import timedelta

import torch.distributed as dist

BEAT_EVERY_S = 1.0
SILENCE_S = 10.0  # a counter still for this long means the rank is gone; a starved thread beats well within it
GOODBYE = 1 << 40  # added to a rank's counter when it stops on its own


class Heartbeat:
    """This rank's heartbeat thread, and what it concluded about the others."""

    def __init__(self, *, rank: int, world_size: int, host: str, port: int, give_up_after_s: float) -> None:
        self.rank, self.world_size, self.store_address = rank, world_size, f"{host}:{port}"
        self.give_up_after_s = give_up_after_s
        self.store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=30))
        self.store.set(self._who_key(rank), f"host {socket.gethostname()}, pid {os.getpid()}")
        for other in range(world_size):  # every counter exists from now on (0 for a rank not here yet), so that
            self.store.add(self._beat_key(other), 0)  # a rank that dies before its first beat is judged too
        self.lost: dict[int, str] = {}  # rank -> who it was, while it stays silent
        self.verdict = threading.Event()  # set while `lost` is not empty
        self.announced = False
        self.announcing = threading.Lock()  # the thread and the main thread may both get here
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="liveness-heartbeat", daemon=True)
        self.thread.start()

    @staticmethod
    def _beat_key(rank: int) -> str:
        return f"liveness/beat/{rank}"

    @staticmethod
    def _who_key(rank: int) -> str:
        return f"liveness/who/{rank}"

    def _run(self) -> None:
        keys = [self._beat_key(r) for r in range(self.world_size)]
        moved: dict[int, tuple[int, float]] = {}  # rank -> (its counter, when that counter last changed)
        while not self.stopped.wait(BEAT_EVERY_S):
            try:
                self.store.add(keys[self.rank], 1)
                counters = [int(value) for value in self.store.multi_get(keys)]
                now = time.monotonic()
                for other, counter in enumerate(counters):
                    if other not in moved or moved[other][0] != counter:
                        moved[other] = (counter, now)
                silent = {
                    r: now - since
                    for r, (counter, since) in moved.items()
                    if r != self.rank and counter < GOODBYE and now - since > SILENCE_S
                }
                if silent and not self.lost:
                    self._conclude({r: self._describe(r) for r in silent})
                    self.announce()
                elif not silent and self.lost:  # a false alarm: the rank was only slow (a stopped or starved process)
                    print(f"note: {self._named()} answering again", file=sys.stderr, flush=True)
                    self.lost, self.announced = {}, False
                    self.verdict.clear()
            except Exception:  # DistStoreError, DistNetworkError or RuntimeError by torch version: rank 0 is gone
                if not self.stopped.is_set():  # reported by the main thread, if it is failing too (lost_ranks_reported)
                    self._conclude(
                        {0: f"it served the rendezvous store at {self.store_address}, which stopped answering"}
                    )
                    if not self.stopped.wait(self.give_up_after_s):
                        self._give_up(f"rank 0 has been gone for over {self.give_up_after_s:.0f} s")
                return
            if silent and max(silent.values()) > SILENCE_S + self.give_up_after_s:
                self._give_up(f"{self._named()} silent for {max(silent.values()):.0f} s")

    def _give_up(self, why: str) -> None:
        """The collective timeout, kept when the backend does not keep it (seen with gloo): end this rank."""
        print(
            f"error: rank {self.rank} stops: {why}, past train.collective_timeout_s={self.give_up_after_s:.0f} s, "
            "and its collective still waits",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)

    def _describe(self, rank: int) -> str:
        key = self._who_key(rank)
        return self.store.get(key).decode() if self.store.check([key]) else "never registered"

    def _conclude(self, lost: dict[int, str]) -> None:
        self.lost = lost
        self.verdict.set()

    def _named(self) -> str:
        return "; ".join(f"rank {r} ({who})" for r, who in sorted(self.lost.items()))

    def announce(self) -> None:
        """Prints the loss once per job: from the lowest surviving rank, or from each when the store is gone."""
        survivors = [r for r in range(self.world_size) if r not in self.lost]
        with self.announcing:
            if not self.announced and (self.rank == min(survivors, default=self.rank) or 0 in self.lost):
                self.announced = True
                print(f"error: {self.message()}", file=sys.stderr, flush=True)

    def message(self) -> str:
        return (
            f"lost {self._named()}: its heartbeat stopped (seen from rank {self.rank}); the job stops. "
            "Run the same command again to resume from the last checkpoint."
        )

    def stop(self, *, goodbye: bool) -> None:
        self.stopped.set()
        self.thread.join(timeout=2 * BEAT_EVERY_S)
        if goodbye:
            with contextlib.suppress(Exception):  # the store is gone already: nobody is left to misjudge this rank
                self.store.add(self._beat_key(self.rank), GOODBYE)


_heartbeat: Heartbeat | None = None


def start_heartbeat(*, give_up_after_s: float) -> None:
    """On every rank of a multi-rank run, once the process group is up (MASTER_ADDR/PORT name the store).
    A rank whose peer stays silent for SILENCE_S + give_up_after_s (the collective timeout) exits."""
    global _heartbeat
    if dist.is_initialized() and dist.get_world_size() > 1 and _heartbeat is None:
        _heartbeat = Heartbeat(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            host=os.environ["MASTER_ADDR"],
            port=int(os.environ["MASTER_PORT"]),
            give_up_after_s=give_up_after_s,
        )


def stop_heartbeat() -> None:
    """Says goodbye (this rank stops on its own) and ends the thread."""
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop(goodbye=True)
        _heartbeat = None


def lost_ranks_reported() -> bool:
    """After a failed collective: waits until the heartbeat can tell, and says whether it found (and reported)
    a lost rank. False when every rank is alive, so the failure has another cause and keeps its traceback."""
    if _heartbeat is None:
        return False
    _heartbeat.verdict.wait(timeout=SILENCE_S + 3 * BEAT_EVERY_S)
    if not _heartbeat.lost:
        return False
    _heartbeat.announce()
    if _heartbeat.rank == 0:  # rank 0 serves the store: keep it up while the other survivors reach the same verdict
        time.sleep(3 * BEAT_EVERY_S)
    return True
