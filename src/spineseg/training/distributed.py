"""Multi-GPU / multi-node training through ``torchrun``; the same code runs as one process.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. With ``WORLD_SIZE > 1`` we join the
process group (NCCL on CUDA, Gloo on CPU), each process uses GPU ``LOCAL_RANK``, and only rank 0
writes files or shows progress. Without those variables everything is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from spineseg.errors import ResourceError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str) -> DistInfo:
    """Join the process group if launched by ``torchrun`` with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        if local >= torch.cuda.device_count():
            raise ResourceError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(local)
    if dist.is_initialized():
        return DistInfo(rank, local, world, initialized_here=False)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank, local, world, initialized_here=True)


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group if we joined it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few scalars over all processes (identity when not distributed)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before validation.

    Each rank updates its running statistics on its own batches; without this the ranks would
    validate slightly different networks and could disagree on early stopping.
    """
    if not info.enabled:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
