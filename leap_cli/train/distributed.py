"""DDP setup under ``torchrun``: reads RANK / WORLD_SIZE / LOCAL_RANK, gloo on CPU, nccl on CUDA.

Single process when RANK is not set. Only rank 0 writes files (``DistInfo.is_main``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from leap_cli.errors import LeapError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise LeapError("train.device is 'cuda' but no CUDA device is available",
                            fix="use --set train.device=cpu or run on a GPU machine")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device_pref: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (RANK set), else a single-process DistInfo."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo(device=pick_device(device_pref))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    log.info("DDP rank %d/%d (local %d) on %s with %s", rank, world, local_rank, device, backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a list of numbers over processes (float64 on the process's device)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
