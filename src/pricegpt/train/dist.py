"""Distributed helpers for `torchrun --nproc-per-node=N -m pricegpt train ...` (data parallel training) and for the
forecast origins that evaluate, calibrate and backtest spread over processes (forecast/shard.py).

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process; the process group is
initialised from them (env://), so multi-node runs work exactly as torchrun's own documentation describes.
NCCL on CUDA, gloo on CPU. Without those variables everything here is a no-op on a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistInfo:
    """This process's place in the world, from torchrun's environment variables."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    return DistInfo(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                    world_size=world_size)


def init(info: DistInfo, device: torch.device, timeout: timedelta | None = None) -> None:
    """Join the process group (once) when this is one process of several. timeout: how long joining and every
    collective wait for the other processes before failing (None: torch's default for the backend)."""
    if not info.enabled or is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch_dist.init_process_group(backend="nccl", init_method="env://", device_id=device, timeout=timeout)
    else:
        torch_dist.init_process_group(backend="gloo", init_method="env://", timeout=timeout)


def is_initialized() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def shutdown() -> None:
    if is_initialized():
        # Every rank reaches this point before any tears its sockets down: a rank whose peer already closed
        # the group can abort in gloo's destructor ("terminate called without an active exception").
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def leave() -> None:
    """Leave the process group without waiting for the others: after an error, when a peer may be inside a
    collective this process will never join (a barrier would wait out the timeout; torchrun stops the rest)."""
    if is_initialized():
        torch_dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled and is_initialized():
        torch_dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `tensor` over all processes in place (no-op on one process) and return it."""
    if info.enabled:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def max_over_processes(value: int, info: DistInfo, device: torch.device) -> int:
    """The largest of every process's `value` (e.g. the number of a signal one rank caught; 0: none); the same on
    every process. A host sync under DDP: call it at the same steps on every rank, and not at every step."""
    if not info.enabled:
        return value
    t = torch.tensor([value], device=device, dtype=torch.int32)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return int(t.item())


def gather_to_main(value, info: DistInfo) -> list | None:
    """Every process's picklable `value` in rank order on the main process, None on the others ([value] on a
    world of one). Collective: every process calls it, at the same point."""
    if not info.enabled:
        return [value]
    gathered = [None] * info.world_size if info.is_main else None
    torch_dist.gather_object(value, gathered, dst=0)
    return gathered
