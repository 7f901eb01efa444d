"""Collectives for metric learning: rows of every rank in rank order, with gradient where it is needed.

Why a gradient through the gather. With every rank computing a loss L on the gathered batch
z = [z_0; z_1; ...; z_{W-1}] (rank r's rows are z_r), the gradient reaching rank r's network must be
dL/dz_r. The adjoint of "concatenate every rank's rows" is "sum, over the ranks, the gradient each
rank's loss sends to z_r" -- so the backward all-reduces the incoming (N_total, ...) gradient and
keeps this rank's slice. If every rank computes the same loss L, rank r receives W * dL/dz_r, and DDP's
gradient averaging (division by W) gives exactly the single-process gradient of L on the concatenated
batch. PML's gather returns detached copies of the other ranks' rows and rank r's rows with only the
local gradient (hence the "multiply the loss by world size" advice, PML #363); here no rescaling is needed
and the loss value is the single-process value.

Order. Rows are concatenated in rank order, on every rank, with the ranks' row counts exchanged first
(ranks may hold different numbers of rows; gloo and NCCL need equal shapes, so rows are padded). So
every rank sees the identical gathered batch and memories filled from it stay identical (PML #639).

`gathered()` marks code that already runs on the gathered batch: inside it `gather_batch` and the
memories' own gathers are no-ops, so a memory used by a wrapped loss enqueues the global batch once.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from .env import is_initialized

_GATHERED = contextvars.ContextVar("ssml_fast_gathered", default=False)


@contextlib.contextmanager
def gathered():
    """Within this block tensors are already the global batch: gathers are skipped."""
    token = _GATHERED.set(True)
    try:
        yield
    finally:
        _GATHERED.reset(token)


def inside_gathered() -> bool:
    return _GATHERED.get()


def active_world(group=None) -> int:
    """World size a gather must span: 1 when not distributed or inside `gathered()`."""
    if inside_gathered() or not is_initialized():
        return 1
    return dist.get_world_size(group)


def row_counts(n: int, device, group=None) -> list[int]:
    """Every rank's row count, in rank order (one small all_gather)."""
    world = dist.get_world_size(group)
    mine = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine, group=group)
    return [int(s) for s in sizes]


def _gather_padded(rows: torch.Tensor, sizes: Sequence[int], group=None) -> torch.Tensor:
    longest = max(sizes)
    if longest == 0:
        return rows[:0]
    as_bool = rows.dtype == torch.bool
    src = rows.to(torch.uint8) if as_bool else rows
    if src.shape[0] == longest:
        padded = src.contiguous()
    else:
        padded = src.new_zeros((longest, *src.shape[1:]))
        padded[: src.shape[0]] = src
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    out = torch.cat([p[:s] for p, s in zip(parts, sizes)])
    return out.bool() if as_bool else out


def all_gather_rows(rows: torch.Tensor, group=None, sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Concatenate every rank's rows (n_r, ...) in rank order, without gradient; the n_r may differ."""
    if not is_initialized() or dist.get_world_size(group) == 1:
        return rows
    sizes = row_counts(rows.shape[0], rows.device, group) if sizes is None else sizes
    return _gather_padded(rows.detach(), sizes, group)


class _AllGatherRows(torch.autograd.Function):
    """all_gather of rows in rank order; backward = all-reduce (sum) of the gradient, this rank's slice."""

    @staticmethod
    def forward(ctx, rows, group, sizes):
        ctx.group, ctx.sizes = group, list(sizes)
        ctx.start = sum(sizes[: dist.get_rank(group)])
        return _gather_padded(rows, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()  # the reduction is in place; never overwrite autograd's buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        n = ctx.sizes[dist.get_rank(ctx.group)]
        return grad[ctx.start: ctx.start + n], None, None


def all_gather_with_grad(rows: torch.Tensor, group=None, sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Every rank's rows in rank order; the gradient flows back to each rank's own rows (see module doc)."""
    if active_world(group) == 1:
        return rows
    sizes = row_counts(rows.shape[0], rows.device, group) if sizes is None else sizes
    if not (rows.requires_grad and torch.is_grad_enabled()):
        return _gather_padded(rows.detach(), sizes, group)
    return _AllGatherRows.apply(rows, group, sizes)


def gather_batch(*tensors, group=None):
    """The global batch: each tensor (rows first; None passes through) gathered in rank order.

    Tensors that require grad keep their gradient (all_gather_with_grad); labels, ids and detached
    tensors are gathered as data. All tensors must have the same number of rows on a rank (one row-count
    exchange serves them all). No-op on one process and inside `gathered()`. Returns a tuple (or the single
    tensor when one is given).
    """
    present = [t for t in tensors if t is not None]
    if active_world(group) == 1 or not present:
        return tensors[0] if len(tensors) == 1 else tuple(tensors)
    n = present[0].shape[0]
    for t in present:
        if not torch.is_tensor(t) or t.dim() == 0:
            raise ValueError(f"gather_batch takes tensors with a row dimension, got {type(t).__name__} "
                             f"{getattr(t, 'shape', '')}")
        if t.shape[0] != n:
            raise ValueError(f"gather_batch: tensors must share their row count, got {n} and {t.shape[0]}")
    sizes = row_counts(n, present[0].device, group)
    out = tuple(None if t is None else all_gather_with_grad(t, group, sizes) for t in tensors)
    return out[0] if len(out) == 1 else out


def rank_offset(n: int, device, group=None) -> tuple[int, int]:
    """(first row of this rank's rows in the gathered batch, total rows) for n local rows."""
    if active_world(group) == 1:
        return 0, n
    sizes = row_counts(n, device, group)
    return sum(sizes[: dist.get_rank(group)]), sum(sizes)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its adjoint is again the sum over ranks (every rank's output depends on every input)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    if not is_initialized() or dist.get_world_size(group) == 1:
        return x
    return _AllReduceSum.apply(x, group)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor, group=None) -> torch.Tensor:
    """Mean over ranks of a tensor (a copy; the input is untouched). Identity on one process."""
    if not is_initialized() or dist.get_world_size(group) == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out / dist.get_world_size(group)


def broadcast_object(obj, src: int = 0, group=None):
    """rank `src`'s Python object on every rank (pickled; tensors inside come back on the CPU)."""
    if not is_initialized() or dist.get_world_size(group) == 1:
        return obj
    box = [obj if dist.get_rank(group) == src else None]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def all_gather_object(obj, group=None) -> list:
    """Every rank's Python object, in rank order."""
    if not is_initialized() or dist.get_world_size(group) == 1:
        return [obj]
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


