"""DistributedDataParallel around a training step, and sharded passes over a dataset.

DDP wraps a module and intercepts its forward; a trainer that calls a method's hooks
(`training_step(batch) -> StepOutput`) wraps a tiny module whose forward is that hook, so DDP sees
every parameter the step uses and averages their gradients in its bucketed all-reduce during backward.

Buffers are not broadcast by DDP (`broadcast_buffers=False`): queues, memory banks and neighbour
tables are kept identical by their rank-ordered updates, and BatchNorm statistics are either global
(SyncBatchNorm) or averaged after each step (`average_batchnorm_buffers`); broadcasting rank 0's
buffers before each forward would hide a divergence instead of preventing it, and cost a copy of every
queue per step.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from .env import is_initialized
from .gather import all_gather_rows


class StepModule(nn.Module):
    """forward(*a, **k) = step(*a, **k) of `owner` (e.g. method.training_step); parameters are owner's."""

    def __init__(self, owner: nn.Module, step: str = "training_step"):
        super().__init__()
        self.owner = owner
        self.step = step

    def forward(self, *args, **kwargs):
        return getattr(self.owner, self.step)(*args, **kwargs)


def wrap_ddp(owner: nn.Module, device: torch.device, *, step: str = "training_step",
             find_unused_parameters: bool = True, process_group=None) -> nn.Module:
    """DDP over `owner`'s step; call the result like the step. Rank 0's parameters and buffers are
    broadcast once here (DDP's construction), so every rank starts from the same state."""
    from torch.nn.parallel import DistributedDataParallel

    if not owner_has_trainable(owner):
        raise ValueError("DDP needs at least one parameter that requires a gradient")
    kw = {"device_ids": [device.index if device.index is not None else torch.cuda.current_device()]} \
        if device.type == "cuda" else {}
    # No buffer broadcast before each forward (module docstring); buffers are still synced from rank 0 once,
    # at construction. Newer torch names the switch forward_sync_buffers (broadcast_buffers is deprecated).
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        kw["forward_sync_buffers"] = False
    else:
        kw["broadcast_buffers"] = False
    return DistributedDataParallel(StepModule(owner, step), find_unused_parameters=find_unused_parameters,
                                   process_group=process_group, **kw)


def owner_has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous near-equal shard [start, end) of range(n) for `rank` (the first n % world shards get one more)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world), got rank={rank}, world={world}")
    return rank * n // world, (rank + 1) * n // world


def sharded_rows(fn: Callable[[int, int], torch.Tensor], n: int, group=None,
                 comm_device: Optional[torch.device] = None) -> torch.Tensor:
    """fn(start, end) -> rows for [start, end) run on this rank's shard, all ranks' rows gathered in order.

    On one process (or when n < world size, so that no shard is empty) fn(0, n). The result is identical
    on every rank. `comm_device`: where the gather runs (a CUDA device under NCCL); the result comes back
    on fn's device.
    """
    world = dist.get_world_size(group) if is_initialized() else 1
    if world == 1 or n < world:
        return fn(0, n)
    start, end = shard_bounds(n, dist.get_rank(group), world)
    rows = fn(start, end)
    if rows.dim() == 0:
        raise ValueError("sharded_rows: fn must return rows (a tensor with a first dimension)")
    home = rows.device
    if comm_device is None and str(dist.get_backend(group)) == "nccl":
        comm_device = torch.device("cuda", torch.cuda.current_device())
    moved = rows.to(comm_device) if comm_device is not None else rows
    return all_gather_rows(moved, group).to(home)
