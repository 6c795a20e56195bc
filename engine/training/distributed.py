"""Running under torchrun: one process per device, DistributedDataParallel, rank 0 writes."""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.models.inference import compute_device


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value, on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def join_world(device: str = "auto") -> World:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU), or run alone.

    Args:
        device: "auto" (a CUDA GPU when there is one), "cpu", "cuda" or "mps".

    Raises:
        InvalidInputError: the device is not here, or is mps under torchrun.
    """
    chosen = compute_device(device)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if chosen.type == "mps" and size > 1:
        raise InvalidInputError("torchrun runs on cpu or cuda, not mps: choose --device")
    use_cuda = chosen.type == "cuda"
    if size <= 1:
        return World(0, 1, chosen)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30)
        )
    device_name = f"cuda:{local_rank}" if use_cuda else "cpu"
    return World(dist.get_rank(), dist.get_world_size(), torch.device(device_name))


def leave_world() -> None:
    """Tear the process group down at the end of a distributed run.

    Whatever was built on the group (a DistributedDataParallel wrapper and its reducer, left
    in a reference cycle) is collected first, so the group is really destroyed here, with its
    threads and connections, while the interpreter is whole, and not at interpreter shutdown,
    where gloo's threads can abort the process ("terminate called without an active
    exception").
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
