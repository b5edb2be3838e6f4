"""Data-parallel training under PyTorch's own engine (``torchrun``).

``torchrun --nproc_per_node N -m kgnnls train ...`` starts N processes with
``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; the CLI calls
:func:`init` (gloo on CPU, NCCL when training on CUDA) and
:func:`kgnnls.train.fit` then trains data-parallel whenever a process group of
more than one process is up:

* every rank loads the full dataset, builds the same network from the seed
  and draws the same seeded permutation of each epoch's training rows;
* ``config.batch_size`` stays the *global* batch: each optimizer step takes
  the next ``batch_size`` rows of the permutation and rank ``r`` trains on
  its :func:`shard` of them (``batch_size / world`` rows), so the union of the
  shards is exactly the single-process batch and the union over an epoch is
  the epoch;
* DistributedDataParallel averages the gradients; each rank's loss is scaled
  by ``world * local_rows / global_rows`` first, so the averaged gradient is
  the gradient of the global batch mean even when a batch does not divide
  evenly;
* validation metrics are computed by rank 0 and broadcast (:func:`agree`), so
  the early-stop and best-epoch decisions are the same on every rank;
* rank 0 alone logs and writes checkpoint.pt, model.pt and metrics.json.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kgnnls.errors import ConfigError


def launched() -> bool:
    """True in a process ``torchrun`` started as one of several (``WORLD_SIZE > 1``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}"
                          ) from None


def backend(device: str = "cpu") -> str:
    """``nccl`` for CUDA training, ``gloo`` otherwise (training is on the CPU today)."""
    return "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"


def init(device: str = "cpu") -> bool:
    """Join the process group ``torchrun`` describes in the environment; True if this
    call created it (the caller then ends it with :func:`finish`), False in a single
    process or when a group is already up."""
    if not launched() or dist.is_initialized():
        return False
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ConfigError(f"WORLD_SIZE is set but {name} is not: start several "
                              "processes with torchrun (see README)")
    # DistributedDataParallel imports torch._dynamo on first use, and that import keeps
    # references to a process group that already exists: the group then outlives
    # destroy_process_group, its gloo worker threads run into interpreter exit, and one
    # of them freeing a finished collective's tensors there aborts the process.
    # Imported before the group exists, nothing holds it
    # (tests/test_distributed.py::test_leaving_the_group_stops_its_gloo_threads).
    import torch._dynamo  # noqa: F401
    dist.init_process_group(backend=backend(device))
    return True


def active() -> bool:
    """A process group of more than one process is up (training is data-parallel)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that logs and writes files."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def finish() -> None:
    """Leave the process group (every rank, at the end)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous part of ``n`` rows split ``world`` ways (the first
    ``n % world`` ranks get one row more, as ``numpy.array_split``)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} out of range for world size {world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def batch_part(start: int, stop: int, rank: int, world: int) -> tuple[int, int, float]:
    """This rank's rows ``[lo, hi)`` of the global batch ``[start, stop)`` and its weight.

    DDP averages gradients over ranks; weighing each rank's mean loss by
    ``world * its rows / batch rows`` makes the result the gradient of the
    global batch mean (weight 1 when the batch divides evenly). A rank left
    without rows still joins the all-reduce: one row, weight 0.
    """
    n = stop - start
    part = shard(n, rank, world)
    lo, hi = start + part.start, start + part.stop
    factor = world * (hi - lo) / n
    if hi == lo:
        lo, hi = start, start + 1
    return lo, hi, factor


def agree(values: Sequence[float]) -> list[float]:
    """Rank 0's ``values`` on every rank (float64 broadcast); the identity alone."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return t.tolist()


def mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over the ranks (``t`` itself alone)."""
    if not active():
        return t
    t = t.detach().clone().double()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled broadcast); ``obj`` alone."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class LossModule(nn.Module):
    """``forward`` is the network's ``loss``: DDP all-reduces gradients only for what
    runs through its ``__call__``, and the training entry point is ``loss``."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, users: Tensor, items: Tensor, labels: Tensor,
                negatives: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if negatives is None:  # baselines' loss takes no negatives
            return self.network.loss(users, items, labels)
        return self.network.loss(users, items, labels, negatives=negatives)


def wrap(network: nn.Module, find_unused: bool = False) -> nn.Module:
    """``network``'s loss under DistributedDataParallel (a :class:`LossModule`).

    ``find_unused``: the loss may leave some parameters out (some baselines do);
    DDP then walks the autograd graph every step to find them.

    Buffers (sampled graph, label table) are built identically from the seed on
    every rank, so they are not re-broadcast each step (``forward_sync_buffers``; older
    torch spells it ``broadcast_buffers``)."""
    ddp = nn.parallel.DistributedDataParallel
    if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters:
        return ddp(LossModule(network), forward_sync_buffers=False,
                   find_unused_parameters=find_unused)
    return ddp(LossModule(network), broadcast_buffers=False, find_unused_parameters=find_unused)


__all__ = ["LossModule", "active", "agree", "backend", "barrier", "batch_part", "finish",
           "from_main", "init", "is_main", "launched", "mean", "rank", "shard", "world_size",
           "wrap"]
