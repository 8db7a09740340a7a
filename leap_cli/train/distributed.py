"""DDP setup under ``torchrun``: reads RANK / WORLD_SIZE / LOCAL_RANK, gloo on CPU, nccl on CUDA.

Single process when RANK is not set. Only rank 0 writes files (``DistInfo.is_main``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from leap_cli.common import counted
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


def pick_device(pref: str, local_rank: int = 0, option: str = "train.device",
                cpu_fix: str = "--set train.device=cpu") -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` (this rank's GPU) or ``cuda:N``; one that cannot be
    had is a LeapError naming ``option``."""
    if pref not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", pref):
        raise LeapError(f"{option} {pref!r} is not a device", fix=f"use {option} auto, cpu or cuda")
    if pref.startswith("cuda") or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise LeapError(f"{option} is {pref!r} but no CUDA device is available",
                            fix=f"use {cpu_fix} or run on a GPU machine")
        if ":" in pref:
            index = int(pref.split(":")[1])
            if index >= torch.cuda.device_count():
                raise LeapError(f"{option} is {pref!r} but there are {torch.cuda.device_count()} CUDA devices",
                                fix=f"use {option} cuda:0 ... cuda:{torch.cuda.device_count() - 1}")
            return torch.device("cuda", index)
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise LeapError(f"LOCAL_RANK is {local_rank} but this machine has {counted(count, 'CUDA device')}",
                            fix=f"start at most {counted(count, 'process', 'processes')} per node (torchrun "
                                f"--nproc_per_node {count})")
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


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span all processes, for CPU/gloo where ``nn.SyncBatchNorm`` refuses
    to run. Sums and squared sums go through the autograd-aware all-reduce, so gradients equal one process
    on the global batch. Same parameter and buffer names as BatchNorm (checkpoints stay interchangeable)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        import warnings

        with warnings.catch_warnings():  # the autograd-aware all_reduce is marked deprecated but has no successor
            warnings.simplefilter("ignore", FutureWarning)
            from torch.distributed.nn.functional import all_reduce

        C = x.shape[1]
        dims = [0, *range(2, x.dim())]
        # Each rank's own mean and centred sum of squares, combined exactly (Chan et al.): the sum of squares less
        # the squared mean would lose a channel's variance in float32 when its mean is far from zero. Rank r fills
        # row r, so the autograd-aware all-reduce (gloo has no differentiable all-gather) gathers the rows.
        local_n = x.numel() / C
        if local_n:
            local_var, local_mean = torch.var_mean(x, dims, correction=0)
        else:  # (a rank with an empty batch adds nothing, where var_mean's NaN would poison every rank)
            local_var = local_mean = x.sum(dims)
        rows = x.new_zeros(dist.get_world_size(), 2 * C + 1)
        rows[dist.get_rank()] = torch.cat([local_mean, local_var * local_n, x.new_full((1,), local_n)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            rows = all_reduce(rows)  # [world, 2C+1]: every rank's mean, centred sum of squares and count
        means, m2s, counts = rows[:, :C], rows[:, C:2 * C], rows[:, 2 * C:]
        n = counts.sum()
        mean = (means * counts).sum(0) / n
        var = (m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        shape = [1, C] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``nn.SyncBatchNorm`` on CUDA, ``CPUSyncBatchNorm`` on the CPU (gloo)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
