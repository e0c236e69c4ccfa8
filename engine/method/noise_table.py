"""The sharded noise table of NAM (docs/method.md): per caption, the per-token noise r of its last scoring.

Rank `c % world` owns caption id c. During an epoch each rank reads the scores of the captions it
processes from a snapshot fetched at the epoch boundary and records new scores locally; at the next
boundary `end_epoch` sends the new scores to their owners and fetches, from the owners, the scores of
the captions the sampler gives this rank next. Scores are quantised to one byte per token:
r = 1 - max cosine lies in [0, 2], codes 0..254 cover it in steps of 2/254 (< 0.008, far below the
spread that masking reacts to) and 255 means "never scored". At N = 77 a caption costs 77 B where it
is owned plus 85 B where it is read, so 4.2 M images x 4 captions take 1.3 GB over all owners (650 MB
per rank on 2 ranks, 160 MB on 8)."""

from __future__ import annotations

from collections import deque

import torch

from engine.runtime import collectives

UNSCORED = 255
LEVELS = 254
NOISE_RANGE = 2.0  # r = 1 - cos lies in [0, 2]


def quantise(noise: torch.Tensor) -> torch.Tensor:
    return torch.round(noise.float().clamp(0.0, NOISE_RANGE) * (LEVELS / NOISE_RANGE)).to(torch.uint8)


def dequantise(codes: torch.Tensor) -> torch.Tensor:
    return codes.float() * (NOISE_RANGE / LEVELS)


class ShardedNoiseTable:
    """Per-token noise of every caption id in [0, caption_id_space), sharded over the ranks."""

    def __init__(self, caption_id_space: int, context_length: int) -> None:
        self.rank, self.world = collectives.rank(), collectives.world_size()
        self.caption_id_space, self.context_length = caption_id_space, context_length
        owned_rows = -(-caption_id_space // self.world)
        self.owned = torch.full((owned_rows, context_length), UNSCORED, dtype=torch.uint8)  # row c // world
        self.readable_ids = torch.empty(0, dtype=torch.long)  # sorted ids owned elsewhere, read this epoch
        self.readable_codes = torch.empty(0, context_length, dtype=torch.uint8)
        self.pending_ids: list[torch.Tensor] = []  # scored this epoch, sent to the owners at its end
        self.pending_codes: list[torch.Tensor] = []
        # CUDA only: (event, ids, pinned codes) of device-to-host copies still in flight, oldest first, and the pinned
        # buffers free for reuse by shape.
        self.in_flight: deque[tuple[torch.cuda.Event, torch.Tensor, torch.Tensor]] = deque()
        self.free_pinned: dict[tuple[int, ...], list[torch.Tensor]] = {}

    def record(self, caption_ids: torch.Tensor, noise: torch.Tensor, valid: torch.Tensor) -> None:
        """Keeps r (B, N) of the valid tokens of captions (B,) until the epoch boundary.

        The table lives in host memory (sized for millions of captions), so the codes, one byte per token, travel
        device -> host. On CUDA the copy goes into pinned memory without blocking, and the codes join the table once
        the copy's event has completed (`poll`, at every record) or at the latest at `settle`; the host never waits
        for the device here."""
        self._check_ids(caption_ids)  # caption ids come from the loader: host tensors
        ids = caption_ids.detach().cpu().long()
        codes = quantise(noise.detach()).masked_fill(
            ~valid.to(noise.device), UNSCORED
        )  # (B, N) uint8, on noise's device
        if codes.device.type != "cuda":
            self.pending_ids.append(ids)
            self.pending_codes.append(codes.cpu())
            return
        self.poll()
        free = self.free_pinned.get(tuple(codes.shape))
        host = free.pop() if free else torch.empty(codes.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(codes, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.in_flight.append((event, ids, host))

    def poll(self) -> None:
        """Takes in the scores whose copies have completed, without waiting for the others."""
        while self.in_flight and self.in_flight[0][0].query():
            self._take_in(*self.in_flight.popleft())

    def settle(self) -> None:
        """Waits for every copy in flight and takes its scores in (before anything reads or saves the table)."""
        while self.in_flight:
            event, ids, host = self.in_flight.popleft()
            event.synchronize()
            self._take_in(event, ids, host)

    def _take_in(self, event, ids: torch.Tensor, host: torch.Tensor) -> None:
        self.pending_ids.append(ids)
        self.pending_codes.append(torch.empty(host.shape, dtype=host.dtype).copy_(host))  # pageable; the pinned
        self.free_pinned.setdefault(tuple(host.shape), []).append(host)  # buffer goes back to the pool

    def lookup(self, caption_ids: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) ids, (B, N) valid -> (noise (B, N) float32, 0 where unknown; known (B,): every valid token scored)."""
        self._check_ids(caption_ids)
        ids = caption_ids.detach().cpu().long()
        codes = torch.full((len(ids), self.context_length), UNSCORED, dtype=torch.uint8)
        local = ids % self.world == self.rank
        codes[local] = self.owned[ids[local] // self.world]
        remote = ~local
        if remote.any() and len(self.readable_ids):
            position = torch.searchsorted(self.readable_ids, ids[remote]).clamp(max=len(self.readable_ids) - 1)
            found = self.readable_ids[position] == ids[remote]
            fetched = self.readable_codes[position]
            codes[remote] = torch.where(found.unsqueeze(1), fetched, torch.full_like(fetched, UNSCORED))
        unscored = (codes == UNSCORED).to(valid.device)
        known = ~(unscored & valid).any(dim=1)
        noise = dequantise(codes).to(valid.device).masked_fill(unscored, 0.0)
        return noise, known

    def end_epoch(self, next_caption_ids: torch.Tensor) -> None:
        """Collective. New scores travel to their owners; this rank fetches what it reads next epoch."""
        ids, codes = self._pending()
        self.pending_ids, self.pending_codes = [], []
        # One message per owner: each row is the caption id's 8 bytes followed by its N codes.
        rows = torch.cat([ids.view(torch.uint8).view(-1, 8), codes], dim=1)  # (P, 8 + N)
        order, counts = self._group_by_owner(ids)
        received = torch.cat(collectives.exchange_rows(list(rows[order].split(counts))))
        received_ids = received[:, :8].contiguous().view(torch.long).view(-1)
        self.owned[received_ids // self.world] = received[:, 8:]
        self.refresh(next_caption_ids)

    def refresh(self, caption_ids: torch.Tensor) -> None:
        """Collective. Fetches from their owners the scores of `caption_ids` that this rank does not own."""
        wanted = torch.sort(caption_ids.detach().cpu().long()).values
        wanted = wanted[wanted % self.world != self.rank]
        order, counts = self._group_by_owner(wanted)
        requests = collectives.exchange_rows(list(wanted[order].split(counts)))
        answers = collectives.exchange_rows([self.owned[asked // self.world] for asked in requests])
        codes = torch.empty(len(wanted), self.context_length, dtype=torch.uint8)
        codes[order] = torch.cat(answers)  # back to ascending id order, so lookups can binary-search
        self.readable_ids, self.readable_codes = wanted, codes

    def _group_by_owner(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """A stable permutation that groups ids by owning rank, and the group sizes."""
        owners = ids % self.world
        groups = [torch.nonzero(owners == r).view(-1) for r in range(self.world)]  # W cheap passes beat a sort
        return torch.cat(groups), [len(g) for g in groups]

    def _pending(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.settle()
        if not self.pending_ids:
            return torch.empty(0, dtype=torch.long), torch.empty(0, self.context_length, dtype=torch.uint8)
        return torch.cat(self.pending_ids), torch.cat(self.pending_codes)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's part: what it owns, what it reads this epoch and what it scored so far in it."""
        pending_ids, pending_codes = self._pending()
        return {
            "owned": self.owned,
            "readable_ids": self.readable_ids,
            "readable_codes": self.readable_codes,
            "pending_ids": pending_ids,
            "pending_codes": pending_codes,
            "layout": torch.tensor([self.caption_id_space, self.context_length, self.rank, self.world]),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restores the same rank of a run of the same world size, mid-epoch included."""
        self._check_layout(state, same_world=True)
        self.owned = state["owned"]
        self.readable_ids, self.readable_codes = state["readable_ids"], state["readable_codes"]
        self.pending_ids, self.pending_codes = [state["pending_ids"]], [state["pending_codes"]]

    def load_owned_from(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Restores from every rank of a run with another world size: keeps the owned rows now owned here.

        What the old ranks read and had scored in the interrupted epoch is dropped: that epoch continues in a new
        order over the captions not yet trained on, and the caller must `refresh` with the captions this rank reads."""
        for state in states:
            self._check_layout(state, same_world=False)
            old_rank, old_world = int(state["layout"][2]), int(state["layout"][3])
            ids = torch.arange(old_rank, self.caption_id_space, old_world)
            mine = ids % self.world == self.rank
            self.owned[ids[mine] // self.world] = state["owned"][: len(ids)][mine]
        self.pending_ids, self.pending_codes = [], []

    def _check_layout(self, state: dict[str, torch.Tensor], *, same_world: bool) -> None:
        space, length, rank, world = (int(v) for v in state["layout"])
        if (space, length) != (self.caption_id_space, self.context_length):
            raise ValueError(
                f"noise table for {space} captions x {length} tokens does not match this run's {self.caption_id_space} x {self.context_length}"
            )
        if same_world and (rank, world) != (self.rank, self.world):
            raise ValueError(f"noise table of rank {rank}/{world} cannot be restored on rank {self.rank}/{self.world}")

    def _check_ids(self, caption_ids: torch.Tensor) -> None:
        if caption_ids.numel() and (int(caption_ids.min()) < 0 or int(caption_ids.max()) >= self.caption_id_space):
            raise IndexError(f"caption id out of range [0, {self.caption_id_space}) in the noise table")
