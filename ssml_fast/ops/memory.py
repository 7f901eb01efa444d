"""In-place memory-bank ops: FIFO ring copy and fused momentum update (`ssml_fast::queue_enqueue_`,
`ssml_fast::bank_momentum_update_`). No autograd: memories hold detached copies and the ops run under
`torch.no_grad()`."""
from __future__ import annotations

import torch

from .. import _validation


@torch.library.register_fake("ssml_fast::queue_enqueue_")
def _queue_enqueue_fake(buffer, rows, ptr):
    return None


@torch.library.register_fake("ssml_fast::queue_enqueue_many_")
def _queue_enqueue_many_fake(buffers, rows, ptr):
    return None


@torch.library.register_fake("ssml_fast::bank_momentum_update_")
def _bank_momentum_update_fake(bank, ids, feats, momentum):
    return None


def check_momentum(momentum) -> float:
    if not _validation.is_real(momentum):
        raise TypeError(f"momentum must be a number, got {type(momentum).__name__}")
    if not 0 <= momentum < 1:  # also rejects NaN
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return float(momentum)


def check_ids(name: str, ids, n: int, num_slots: int, device: torch.device) -> torch.Tensor:
    """(n,) integer ids on `device`, returned as int64. The range [0, num_slots) is checked by the op itself
    on every device (the CPU kernel while it groups the ids, the CUDA one with a single device-side flag), so
    this wrapper reads no data and stays traceable (meta tensors, torch.compile)."""
    return _validation.check_labels(name, ids, n, device)


def _check_ring(i: str, buffer, rows, size: int | None = None, n: int | None = None) -> None:
    _validation.check_tensor(f"buffer{i}", buffer)
    _validation.check_tensor(f"rows{i}", rows)
    if buffer.dim() == 0 or buffer.shape[0] == 0:
        raise ValueError(f"buffer{i} must have at least one slot, got shape {tuple(buffer.shape)}")
    if not buffer.is_contiguous():
        raise ValueError(f"buffer{i} must be contiguous (it is written in place)")
    if rows.dim() != buffer.dim() or rows.shape[1:] != buffer.shape[1:]:
        raise ValueError(
            f"rows{i} must have shape (N, {', '.join(map(str, buffer.shape[1:]))}) to match buffer{i}, "
            f"got {tuple(rows.shape)}"
        )
    if rows.dtype != buffer.dtype:
        raise TypeError(f"rows{i} has dtype {rows.dtype} but buffer{i} has {buffer.dtype}")
    if rows.device != buffer.device:
        raise ValueError(f"rows{i} is on {rows.device} but buffer{i} is on {buffer.device}")
    if size is not None and buffer.shape[0] != size:
        raise ValueError(f"buffer{i} has {buffer.shape[0]} slots but buffers[0] has {size}")
    if n is not None and rows.shape[0] != n:
        raise ValueError(f"rows{i} has {rows.shape[0]} rows but rows[0] has {n}")


def _check_ptr(ptr, size: int) -> None:
    if not _validation.is_int(ptr) or not 0 <= ptr < size:
        raise ValueError(f"ptr must be an int in [0, {size}), got {ptr!r}")


def queue_enqueue_(buffer: torch.Tensor, rows: torch.Tensor, ptr: int) -> int:
    """Copy rows (N, ...) into the ring buffer (S, ...) from slot `ptr`, wrapping around; returns the
    new pointer (ptr + N) % S.

    Row k lands in slot (ptr + k) % S; when N > S only the last S rows are kept, which is exactly what
    N single-row enqueues would leave (strict first-in-first-out). Any dtype; rows must match the
    buffer's dtype, device and trailing shape. buffer must be contiguous; it is written in place.
    """
    _check_ring("", buffer, rows)
    _check_ptr(ptr, buffer.shape[0])
    torch.ops.ssml_fast.queue_enqueue_(buffer, rows.detach(), ptr)
    return (ptr + rows.shape[0]) % buffer.shape[0]


def queue_enqueue_many_(buffers, rows, ptr: int) -> int:
    """`queue_enqueue_` for aligned rings in one call: buffers[i] (S, ...) receives rows[i] (N, ...).

    All buffers share the slot count S and all rows the length N (e.g. a queue's embeddings, labels and
    ids). Returns the new pointer (ptr + N) % S.
    """
    buffers, rows = list(buffers), list(rows)
    if not buffers or len(buffers) != len(rows):
        raise ValueError(f"buffers and rows must be non-empty lists of one length, got {len(buffers)} and {len(rows)}")
    for i, (b, r) in enumerate(zip(buffers, rows)):
        _check_ring(f"[{i}]", b, r, buffers[0].shape[0] if i else None, rows[0].shape[0] if i else None)
    if any(b.device != buffers[0].device for b in buffers):
        raise ValueError("buffers must all be on one device")
    _check_ptr(ptr, buffers[0].shape[0])
    torch.ops.ssml_fast.queue_enqueue_many_(buffers, [r.detach() for r in rows], ptr)
    return (ptr + rows[0].shape[0]) % buffers[0].shape[0]


def bank_momentum_update_(bank: torch.Tensor, ids: torch.Tensor, feats: torch.Tensor, momentum: float) -> None:
    """bank[id] = normalise(momentum * bank[id] + (1 - momentum) * f) for every id, in one fused pass.

    bank: (N, D) contiguous float tensor, written in place; ids: (B,) int32/int64 in [0, N); feats:
    (B, D), cast to the bank's dtype; momentum in [0, 1) (0 overwrites the slot with normalise(f)).
    Duplicate ids in one call use f = the mean of their feats rows (summed in ascending row order, so
    the result is deterministic), unlike index_copy_ whose outcome with duplicates is undefined.
    normalise(x) = x / max(||x||, 1e-12), as torch.nn.functional.normalize: a NaN feature writes an all-NaN
    slot, as F.normalize would. feats may be a view of the bank (it is then read before any slot is written).
    Out-of-range ids raise ValueError on every device (on CUDA this reads one flag back to the host).
    """
    _validation.check_tensor("bank", bank)
    if bank.dim() != 2:
        raise ValueError(f"bank must be 2-D (N, D), got shape {tuple(bank.shape)}")
    if not bank.is_floating_point():
        raise TypeError(f"bank must be a floating tensor, got {bank.dtype}")
    if not bank.is_contiguous():
        raise ValueError("bank must be contiguous (it is written in place)")
    _validation.check_embeddings("feats", feats)
    if feats.shape[1] != bank.shape[1]:
        raise ValueError(f"feats has dimension {feats.shape[1]} but the bank has {bank.shape[1]}")
    if feats.device != bank.device:
        raise ValueError(f"feats is on {feats.device} but the bank is on {bank.device}")
    ids = check_ids("ids", ids, feats.shape[0], bank.shape[0], bank.device)
    momentum = check_momentum(momentum)
    feats = feats.detach()
    if feats.dtype != bank.dtype:
        feats = feats.to(bank.dtype)
    torch.ops.ssml_fast.bank_momentum_update_(bank, ids, feats, momentum)
