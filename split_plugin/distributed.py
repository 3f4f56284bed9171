"""Data-parallel training: one process per device, each scoring a slice of every global batch.

Launch with `accelerate launch` or `torchrun`: they set WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT, and `setup()` joins the process group from them (gloo on CPU, nccl on CUDA)
unless the caller already initialized one. Every process holds all pairs and makes the same
seeded draws (batch order, multipliers); process r scores a contiguous slice of each global
batch. The trainer weights each process's loss by its share of the batch and `sync` sums the
weighted gradients, so the update equals the single-process one on the mean loss over the
global batch, also when the last batch does not split evenly (or leaves a process nothing).
Only rank 0 shows progress and writes checkpoints and saved interventions.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from .errors import SplitPluginError

_LAUNCH_VARS = ("RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DataParallel:
    """This process's place among the training processes (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that shows progress and writes files."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This process's contiguous part of n items; sizes differ by at most one (low ranks get more)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + int(self.rank < extra))

    def share(self, n: int) -> float:
        """The fraction of a global batch of n pairs that this process scores: its loss weight."""
        part = self.shard(n)
        return (part.stop - part.start) / n

    def sync(self, params: Sequence[torch.Tensor], values: Sequence[float]) -> list[float]:
        """Sum the (share-weighted) gradients of `params` and the numbers `values` over processes.

        One all-reduce. A parameter left without a gradient everywhere stays without one, as in a
        single process; one with a gradient somewhere gets the sum (zeros elsewhere).
        """
        if not self.enabled:
            return list(values)
        device = params[0].device
        parts = [p.grad.detach().reshape(-1).float() if p.grad is not None
                 else torch.zeros(p.numel(), device=device) for p in params]
        flags = torch.tensor([float(p.grad is not None) for p in params], device=device)
        buffer = torch.cat([*parts, flags, torch.tensor(list(values), dtype=torch.float32, device=device)])
        dist.all_reduce(buffer)
        *grads, flags, values = buffer.split([p.numel() for p in params] + [len(params), len(values)])
        for p, grad, flag in zip(params, grads, flags.tolist()):
            p.grad = grad.view_as(p).to(p.dtype).clone() if flag else None
        return values.tolist()


def setup(device: torch.device | str = "cpu", config=None) -> DataParallel:
    """The process group this process trains in: the caller's, one joined from launcher variables, or none.

    `device` is where the model sits (picks the backend: nccl for CUDA, gloo otherwise).
    `config` (a TrainConfig) is checked for settings data parallelism cannot reproduce.
    """
    if not dist.is_available():
        return DataParallel()
    if not dist.is_initialized():
        world = _int_env("WORLD_SIZE", 1)
        if world <= 1:
            return DataParallel()
        missing = [name for name in _LAUNCH_VARS if not os.environ.get(name)]
        if missing:
            raise SplitPluginError(f"WORLD_SIZE={world} is set but {missing} are not; launch with "
                                   "`accelerate launch` or `torchrun`, or unset WORLD_SIZE")
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device.index if device.index is not None else _int_env("LOCAL_RANK", 0))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
        atexit.register(_destroy)
    dp = DataParallel(dist.get_rank(), dist.get_world_size())
    if dp.enabled and config is not None and config.pooled_hinge:
        raise SplitPluginError("pooled_hinge takes one hinge over the whole batch, which data-parallel "
                               "training cannot split across processes; use pooled_hinge: false")
    return dp


def place_model(model: torch.nn.Module, requested: str) -> torch.nn.Module:
    """Move a model loaded on the CPU to this process's GPU when `requested` is cuda.

    Under a launcher, plain `cuda` means cuda:LOCAL_RANK (one GPU per process). Without CUDA
    the model stays where it is and train() reports the mismatch.
    """
    device = torch.device(requested)
    if device.type == "cuda" and torch.cuda.is_available():
        if device.index is None and _int_env("WORLD_SIZE", 1) > 1:
            device = torch.device("cuda", _int_env("LOCAL_RANK", 0))
        model.to(device)
    return model


def is_main_process() -> bool:
    """False in every process but rank 0 of a data-parallel launch (from the group or the launcher's RANK)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _int_env("RANK", 0) == 0


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise SplitPluginError(f"environment variable {name}={value!r} is not an integer") from None


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
