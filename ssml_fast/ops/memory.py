"""In-place memory-bank ops: FIFO ring copy and fused momentum update (`ssml_fast::queue_enqueue_`,
`ssml_fast::bank_momentum_update_`). No autograd: memories hold detached copies and the ops run under
`torch.no_grad()`."""
from __future__ import annotations

import torch

from . import _checks


@torch.library.register_fake("ssml_fast::queue_enqueue_")
def _queue_enqueue_fake(buffer, rows, ptr):
    return None


@torch.library.register_fake("ssml_fast::bank_momentum_update_")
def _bank_momentum_update_fake(bank, ids, feats, momentum):
    return None


def check_momentum(momentum) -> float:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(f"momentum must be a number, got {type(momentum).__name__}")
    if not 0 <= momentum < 1:  # also rejects NaN
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return float(momentum)


def check_ids(name: str, ids, n: int, num_slots: int, device: torch.device) -> torch.Tensor:
    """(n,) integer ids in [0, num_slots) on `device`, returned as int64. Reads ids.min()/max(): one
    host synchronisation on CUDA."""
    ids = _checks.check_labels(name, ids, n, device)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_slots):
        raise ValueError(
            f"{name} must be in [0, {num_slots}), got values in [{int(ids.min())}, {int(ids.max())}]"
        )
    return ids


def queue_enqueue_(buffer: torch.Tensor, rows: torch.Tensor, ptr: int) -> int:
    """Copy rows (N, ...) into the ring buffer (S, ...) from slot `ptr`, wrapping around; returns the
    new pointer (ptr + N) % S.

    Row k lands in slot (ptr + k) % S; when N > S only the last S rows are kept, which is exactly what
    N single-row enqueues would leave (strict first-in-first-out). Any dtype; rows must match the
    buffer's dtype, device and trailing shape. buffer must be contiguous; it is written in place.
    """
    _checks.check_tensor("buffer", buffer)
    _checks.check_tensor("rows", rows)
    if buffer.dim() == 0 or buffer.shape[0] == 0:
        raise ValueError(f"buffer must have at least one slot, got shape {tuple(buffer.shape)}")
    if not buffer.is_contiguous():
        raise ValueError("buffer must be contiguous (it is written in place)")
    if rows.dim() != buffer.dim() or rows.shape[1:] != buffer.shape[1:]:
        raise ValueError(
            f"rows must have shape (N, {', '.join(map(str, buffer.shape[1:]))}) to match buffer, "
            f"got {tuple(rows.shape)}"
        )
    if rows.dtype != buffer.dtype:
        raise TypeError(f"rows has dtype {rows.dtype} but buffer has {buffer.dtype}")
    if rows.device != buffer.device:
        raise ValueError(f"rows is on {rows.device} but buffer is on {buffer.device}")
    size = buffer.shape[0]
    if isinstance(ptr, bool) or not isinstance(ptr, int) or not 0 <= ptr < size:
        raise ValueError(f"ptr must be an int in [0, {size}), got {ptr!r}")
    torch.ops.ssml_fast.queue_enqueue_(buffer, rows.detach(), ptr)
    return (ptr + rows.shape[0]) % size


def bank_momentum_update_(bank: torch.Tensor, ids: torch.Tensor, feats: torch.Tensor, momentum: float) -> None:
    """bank[id] = normalise(momentum * bank[id] + (1 - momentum) * f) for every id, in one fused pass.

    bank: (N, D) contiguous float tensor, written in place; ids: (B,) int32/int64 in [0, N); feats:
    (B, D), cast to the bank's dtype; momentum in [0, 1) (0 overwrites the slot with normalise(f)).
    Duplicate ids in one call use f = the mean of their feats rows (summed in ascending row order, so
    the result is deterministic), unlike index_copy_ whose outcome with duplicates is undefined.
    normalise(x) = x / max(||x||, 1e-12), as torch.nn.functional.normalize.
    """
    _checks.check_tensor("bank", bank)
    if bank.dim() != 2:
        raise ValueError(f"bank must be 2-D (N, D), got shape {tuple(bank.shape)}")
    if not bank.is_floating_point():
        raise TypeError(f"bank must be a floating tensor, got {bank.dtype}")
    if not bank.is_contiguous():
        raise ValueError("bank must be contiguous (it is written in place)")
    _checks.check_embeddings("feats", feats)
    if feats.shape[1] != bank.shape[1]:
        raise ValueError(f"feats has dimension {feats.shape[1]} but the bank has {bank.shape[1]}")
    if feats.device != bank.device:
        raise ValueError(f"feats is on {feats.device} but the bank is on {bank.device}")
    ids = check_ids("ids", ids, feats.shape[0], bank.shape[0], bank.device)
    momentum = check_momentum(momentum)
    torch.ops.ssml_fast.bank_momentum_update_(bank, ids, feats.detach().to(bank.dtype), momentum)
