"""The one seam through which training code talks to other ranks.

SDM needs the global batch with gradient (docs/method.md): `gather_with_grad` concatenates every
rank's features in rank order, and its backward sums the gradients of every rank's loss copy into
the local slice, so that DeepSpeed's gradient averaging gives exactly the single-process gradient of
the loss on the concatenated batch. On one process every function here is the identity."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as functional_collectives


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def device() -> torch.device:
    """This rank's GPU when there is one (the process group's setup selected it), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def free_port() -> int:
    """A TCP port free on this host now, for a rendezvous on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# The autograd-aware all-gather: all_gather_single_autograd in newer torch releases, which deprecate (with a warning
# on every call) the name torch 2.11 has, all_gather_tensor_autograd. Same op, same backward.
_all_gather_autograd = (
    getattr(functional_collectives, "all_gather_single_autograd", None)
    or functional_collectives.all_gather_tensor_autograd
)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (world * B, ...) on every rank, rank-major, differentiable."""
    if not is_distributed():
        return tensor
    # Autograd-aware all-gather; its backward reduce-scatters (sums) the gradients of every rank's copy.
    gathered = _all_gather_autograd(tensor.contiguous(), 0, dist.group.WORLD)
    return functional_collectives.wait_tensor(gathered)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Like gather_with_grad for tensors that need no gradient (pids, caption ids)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sums a few numbers over ranks (counters and losses for logging)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_communication_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()  # host sync: only at logging points


_CONTROL_GROUP = None


def _control_group():
    """A gloo group for tiny host-side agreements, so that they never wait on the GPU stream."""
    global _CONTROL_GROUP
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    if _CONTROL_GROUP is None:
        _CONTROL_GROUP = dist.new_group(backend="gloo")  # every rank reaches its first agreement together
    return _CONTROL_GROUP


def agree(row: list[int]) -> list[list[int]]:
    """Every rank's `row` of a few integers, on every rank, in rank order: one all-gather of one CPU tensor on the
    control group (gloo), so that it neither waits on nor synchronises the device."""
    if not is_distributed():
        return [list(row)]
    mine = torch.tensor(row, dtype=torch.int64)
    rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, mine, group=_control_group())
    return [r.tolist() for r in rows]  # CPU tensors: no device sync


def _communication_device() -> torch.device:
    """nccl only moves CUDA tensors; gloo moves CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def exchange_rows(outgoing: list[torch.Tensor]) -> list[torch.Tensor]:
    """All-to-all of variable-length row blocks: outgoing[r] goes to rank r; returns what each rank sent here.

    Every block has the same trailing shape and dtype (e.g. (k, N) uint8 or (k,) int64). Two collectives:
    the row counts first, then the rows themselves in one all_to_all_single.
    """
    if not is_distributed():
        return [outgoing[0]]
    device = _communication_device()
    send_counts = torch.tensor([len(block) for block in outgoing], dtype=torch.long, device=device)
    receive_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(receive_counts, send_counts)
    sizes_out, sizes_in = send_counts.tolist(), receive_counts.tolist()  # host sync: once per exchange
    send = torch.cat(outgoing).to(device).contiguous()
    receive = send.new_empty((sum(sizes_in), *send.shape[1:]))
    dist.all_to_all_single(receive, send, output_split_sizes=sizes_in, input_split_sizes=sizes_out)
    return list(receive.cpu().split(sizes_in))


def block_bounds(total: int) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of `total` items, for data-parallel evaluation."""
    world, me = world_size(), rank()
    return total * me // world, total * (me + 1) // world


def gather_blocks(local: torch.Tensor, total: int) -> torch.Tensor:
    """Every rank's `block_bounds` share of (total, ...) rows -> all rows in order, on every rank."""
    if not is_distributed():
        return local
    world = dist.get_world_size()
    largest = max(total * (r + 1) // world - total * r // world for r in range(world))
    padded = local.new_zeros((largest, *local.shape[1:]))
    padded[: len(local)] = local
    padded = padded.to(_communication_device())
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    sizes = [total * (r + 1) // world - total * r // world for r in range(world)]
    return torch.cat([part[:size].to(local.device) for part, size in zip(parts, sizes, strict=True)])
