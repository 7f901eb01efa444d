"""Shared helpers for the pair-based losses and the miners: label masks, mined-index conversion, similarity.

Everything here is (B, R)-sized: pairs are represented as dense weight matrices over the B x R
similarity matrix, never as Python lists, so a loss is a handful of masked reductions over one matrix.
"""
from __future__ import annotations

import torch

from .. import ops
from ..ops import _checks

SIMILARITIES = ("cosine", "dot")
REDUCTIONS = ("mean_nonzero", "mean", "sum")


def label_masks(labels: torch.Tensor, ref_labels: torch.Tensor | None, self_ref: bool):
    """(B,) and (R,) int labels -> (pos, neg) bool (B, R). In the self-reference case the diagonal is
    neither positive nor negative (a sample is never paired with itself)."""
    ref = labels if ref_labels is None else ref_labels
    pos = labels[:, None] == ref[None, :]
    neg = ~pos
    if self_ref:
        pos.fill_diagonal_(False)
    return pos, neg


def _check_indices(name, idx, size, device):
    _checks.check_tensor(name, idx)
    if idx.dim() != 1 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D integer tensor, got {idx.dtype} of shape {tuple(idx.shape)}")
    idx = idx.to(device).long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise ValueError(f"{name} has indices outside [0, {size})")
    return idx


def as_pairs(indices_tuple, B: int, R: int, device):
    """indices_tuple (a, p, n) or (a1, p, a2, n) -> (a1, p, a2, n) as int64, checked against B and R.
    Triplets become pairs the way PML converts them: (a, p) and (a, n), duplicates kept."""
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        raise ValueError("indices_tuple must be (anchors, positives, negatives) or (a1, p, a2, n)")
    if len(indices_tuple) == 3:
        a, p, n = indices_tuple
        a = _check_indices("indices_tuple[0]", a, B, device)
        p = _check_indices("indices_tuple[1]", p, R, device)
        n = _check_indices("indices_tuple[2]", n, R, device)
        if not a.numel() == p.numel() == n.numel():
            raise ValueError("indices_tuple tensors (a, p, n) must have the same length")
        return a, p, a, n
    a1, p, a2, n = (_check_indices(f"indices_tuple[{i}]", t, B if i % 2 == 0 else R, device)
                    for i, t in enumerate(indices_tuple))
    if a1.numel() != p.numel() or a2.numel() != n.numel():
        raise ValueError("indices_tuple: a1/p and a2/n must have matching lengths")
    return a1, p, a2, n


def pair_counts(idx_rows, idx_cols, B, R, dtype, device):
    """How many times each (row, col) pair occurs -> (B, R) float; PML counts repeated mined pairs."""
    w = torch.zeros(B * R, dtype=dtype, device=device)
    w.index_add_(0, idx_rows * R + idx_cols, torch.ones(idx_rows.numel(), dtype=dtype, device=device))
    return w.view(B, R)


def pair_weights(labels, ref_labels, indices_tuple, B, R, self_ref, dtype, device):
    """(pos_w, neg_w), each (B, R) float: 0/1 label masks, or pair multiplicities from indices_tuple."""
    if indices_tuple is not None:
        a1, p, a2, n = as_pairs(indices_tuple, B, R, device)
        return pair_counts(a1, p, B, R, dtype, device), pair_counts(a2, n, B, R, dtype, device)
    pos, neg = label_masks(labels, ref_labels, self_ref)
    return pos.to(dtype), neg.to(dtype)


def sample_weights(indices_tuple, B, dtype, device):
    """Per-sample weight from how often it occurs in indices_tuple, count / max count (PML's
    convert_to_weights); all ones without an indices_tuple (or an empty one)."""
    if indices_tuple is None:
        return torch.ones(B, dtype=dtype, device=device)
    as_pairs(indices_tuple, B, B, device)  # validation only: a triplet's anchor counts once
    if all(len(t) == 0 for t in indices_tuple):
        return torch.ones(B, dtype=dtype, device=device)
    idx = torch.cat([t.to(device).long() for t in indices_tuple])
    counts = torch.bincount(idx, minlength=B)[:B].to(dtype)
    return counts / counts.max()


def similarity(x: torch.Tensor, y: torch.Tensor | None, kind: str) -> torch.Tensor:
    """(B, D), (R, D) -> (B, R): "cosine" through the fused distance op (1 - d), or "dot" (x y^T)."""
    if kind == "cosine":
        return 1.0 - ops.pairwise_distance(x, y, "cosine")
    dtype = _checks.compute_dtype(x)
    x = x.to(dtype)
    return x @ (x if y is None else y.to(dtype)).T


def distance(x: torch.Tensor, y: torch.Tensor | None, kind: str) -> torch.Tensor:
    return ops.pairwise_distance(x, y, kind)


def masked_logsumexp(x: torch.Tensor, w: torch.Tensor, dim: int = 1, empty: float = float("-inf")):
    """log sum_j w_j exp(x_j) along `dim` for weights w >= 0 (0 = excluded, k = counted k times);
    rows with no weight give `empty`. Finite gradients everywhere (excluded entries get exactly 0)."""
    keep = w > 0
    z = torch.where(keep, x + torch.log(torch.where(keep, w, torch.ones_like(w))), torch.full_like(x, -torch.inf))
    m = z.amax(dim=dim, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(z - m).sum(dim=dim, keepdim=True)
    any_ = keep.any(dim=dim, keepdim=True)
    out = torch.where(any_, torch.log(torch.where(any_, s, torch.ones_like(s))) + m, torch.full_like(s, empty))
    return out.squeeze(dim)


def zero_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """A 0-d zero connected to the inputs' graphs, so backward gives zero gradients, not None."""
    out = None
    for t in tensors:
        if t is not None and t.requires_grad:
            z = t.sum() * 0
            out = z if out is None else out + z
    if out is None:
        t = next(t for t in tensors if t is not None)
        out = torch.zeros((), dtype=_checks.compute_dtype(t), device=t.device)
    return out


def check_positive(name, value) -> float:
    v = _checks.check_nonnegative(name, value)
    if v == 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return v


def check_real(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)
