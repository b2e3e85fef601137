"""torch.distributed under torchrun: process group setup/teardown, rank helpers, metric all-reduce."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from train.metrics import FewShotIoU

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: (rank, world_size, local_rank) and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True under torchrun (or any launcher exporting WORLD_SIZE > 1 and the env:// rendezvous)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> DistInfo:
    """Join the process group that torchrun describes in the environment; a no-op single process otherwise.

    Backend: nccl when `device` is CUDA (each process takes GPU LOCAL_RANK), gloo on CPU.
    """
    if not launched():
        return DistInfo(0, 1, 0, torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def teardown() -> None:
    """Leave the process group (after the last collective)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """(rank, world_size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that logs and writes files."""
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def _device() -> torch.device:
    """Where collective tensors live: the current GPU for nccl, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank (pickled); other ranks' values are ignored."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_device())
    return box[0]  # type: ignore[return-value]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's `obj` (pickled), in rank order; `[obj]` in a single process."""
    if rank_world()[1] == 1:
        return [obj]
    box: list[T | None] = [None] * rank_world()[1]
    dist.all_gather_object(box, obj)
    return box  # type: ignore[return-value]


def all_true(flag: bool) -> bool:
    """True when `flag` holds on every rank (e.g. every rank's loss is finite)."""
    if rank_world()[1] == 1:
        return flag
    t = torch.tensor([int(flag)], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def shard_range(n: int, batch_size: int, rank: int | None = None, world: int | None = None) -> range:
    """This rank's contiguous slice of `n` items, cut at multiples of `batch_size`.

    Whole batches stay whole, so every batch a rank sees is exactly a batch of the single-process
    run (same shapes, same padding): per-episode predictions, hence the summed metric, are identical.
    """
    if rank is None or world is None:
        rank, world = rank_world()
    batches = -(-n // batch_size)
    first, last = rank * batches // world, (rank + 1) * batches // world
    return range(min(first * batch_size, n), min(last * batch_size, n))


def all_reduce_sum(counts: np.ndarray) -> np.ndarray:
    """`counts` (int64) summed over all ranks; the array itself when there is one process."""
    if rank_world()[1] == 1:
        return counts
    total = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int64)).to(_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.cpu().numpy()


def all_reduce_metric(metric: FewShotIoU) -> None:
    """Sum `metric`'s per-class integer sums over all ranks, in place (exact: int64 counts)."""
    if rank_world()[1] == 1:
        return
    dev = _device()
    top = torch.tensor([metric.max_class_id()], dtype=torch.int64, device=dev)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)  # ranks may have seen different classes
    sums = metric.sums_tensor(int(top.item()) + 1).to(dev)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    metric.load_sums_tensor(sums.cpu())
