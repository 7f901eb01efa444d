"""Shared helpers for the pair-based losses and the miners: label masks, mined-index conversion, similarity.

Everything here is (B, R)-sized: pairs are represented as dense weight matrices over the B x R
similarity matrix, never as Python lists, so a loss is a handful of masked reductions over one matrix.
"""
from __future__ import annotations

import contextlib

import torch

from .. import ops
from .. import _validation as _checks
from .._validation import REDUCTIONS, check_positive, check_real  # noqa: F401  (one definition, re-exported here)

SIMILARITIES = ("cosine", "dot")


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
    if idx.dim() != 1 or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D integer tensor, got {idx.dtype} of shape {tuple(idx.shape)}")
    idx = idx.to(device).long()
    # Negative indices would wrap around and silently pick rows from the end.
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise ValueError(f"{name} has indices outside [0, {size}): got range [{int(idx.min())}, {int(idx.max())}]")
    return idx


class _CheckedIndices(tuple):
    """An indices_tuple already validated against (B, R) on a device: a second check is free (the range check
    is a pass plus a host sync per tensor, and all-pairs tuples from CrossBatchMemory are B x R long)."""

    key: tuple


def check_indices_tuple(indices_tuple, B: int, R: int, device) -> tuple:
    """The one validation of a mined indices_tuple, shared by every loss: (a, p, n) or (a1, p, a2, n) of
    1-D integer tensors, anchors in [0, B), positives / negatives in [0, R), matching lengths.
    Returns the same arity as int64 tensors on `device`."""
    key = (B, R, torch.device(device))
    if isinstance(indices_tuple, _CheckedIndices) and indices_tuple.key == key:
        return indices_tuple
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        raise ValueError("indices_tuple must be (anchors, positives, negatives) or (a1, p, a2, n)")
    if len(indices_tuple) == 3:
        sizes = (B, R, R)
    else:
        sizes = (B, R, B, R)
    out = tuple(_check_indices(f"indices_tuple[{i}]", t, size, device)
                for i, (t, size) in enumerate(zip(indices_tuple, sizes)))
    if len(out) == 3:
        if not out[0].numel() == out[1].numel() == out[2].numel():
            raise ValueError("indices_tuple tensors (a, p, n) must have the same length")
    elif out[0].numel() != out[1].numel() or out[2].numel() != out[3].numel():
        raise ValueError("indices_tuple: a1/p and a2/n must have matching lengths")
    out = _CheckedIndices(out)
    out.key = key
    return out


def as_pairs(indices_tuple, B: int, R: int, device):
    """indices_tuple (a, p, n) or (a1, p, a2, n) -> (a1, p, a2, n) as int64, checked against B and R.
    Triplets become pairs the way PML converts them: (a, p) and (a, n), duplicates kept."""
    t = check_indices_tuple(indices_tuple, B, R, device)
    if len(t) == 3:
        a, p, n = t
        return a, p, a, n
    return t


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


def sample_weights(indices_tuple, B, dtype, device, R=None):
    """Per-sample weight from how often it occurs in indices_tuple, count / max count (PML's
    convert_to_weights); all ones without an indices_tuple (or an empty one).
    R: the reference size when the positives / negatives index a separate ref_emb (R rows); then only the
    anchors index the embeddings and only they are counted. R=None: the batch is its own reference and
    every index counts, as in PML."""
    if indices_tuple is None:
        return torch.ones(B, dtype=dtype, device=device)
    t = check_indices_tuple(indices_tuple, B, B if R is None else R, device)
    if R is not None:
        t = t[0::2] if len(t) == 4 else t[:1]
    if all(len(x) == 0 for x in t):
        return torch.ones(B, dtype=dtype, device=device)
    counts = torch.bincount(torch.cat(t), minlength=B).to(dtype)
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
    """A 0-d zero connected to the inputs' graphs, so backward gives zero gradients, not None.
    Built from an empty slice, so it stays exactly 0 (and the gradients exactly 0) even when an input
    holds NaN or inf, where `t.sum() * 0` would be NaN. float32 for half-precision inputs."""
    ts = [t for t in tensors if t is not None]
    dtype = _checks.compute_dtype(ts[0])
    out = None
    for t in ts:
        if t.requires_grad:
            z = t.reshape(-1)[:0].sum().to(dtype)
            out = z if out is None else out + z
    if out is None:
        out = torch.zeros((), dtype=dtype, device=ts[0].device)
    return out


def autocast_off(t: torch.Tensor):
    """A context with autocast disabled on t's device type: the losses and miners compute in the inputs'
    own precision (float32 for half inputs, see _checks.compute_dtype), as torch's own losses do under AMP;
    B x R distance and similarity matrices in bfloat16 would lose the differences the losses rank by."""
    kind = t.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def all_triplets(labels, ref_labels, self_ref: bool):
    """Every (a, p, n) with label(p) == label(a) != label(n) (p != a for the batch itself), ordered by
    (a, p, n) as PML's get_all_triplets_indices; built per positive pair against its anchor's negative
    row, O(#positive pairs x R) memory instead of PML's B x R x R mask (the output itself is the size of
    the triplet set)."""
    pos, neg = label_masks(labels, ref_labels, self_ref)
    a, p = torch.where(pos)
    k, n = torch.where(neg[a])
    return a[k], p[k], n


def random_triplets(labels, ref_labels, self_ref: bool, per_anchor: int, generator=None):
    """per_anchor random triplets for every anchor with a positive and a negative: positives and negatives
    drawn uniformly with replacement (PML's get_random_triplet_indices, with torch's global generator)."""
    pos, neg = label_masks(labels, ref_labels, self_ref)
    ok = pos.any(dim=1) & neg.any(dim=1)
    rows = torch.where(ok)[0]
    if rows.numel() == 0:
        e = torch.empty(0, dtype=torch.long, device=labels.device)
        return e, e.clone(), e.clone()
    p = torch.multinomial(pos[rows].float(), per_anchor, replacement=True, generator=generator)
    n = torch.multinomial(neg[rows].float(), per_anchor, replacement=True, generator=generator)
    return rows.repeat_interleave(per_anchor), p.reshape(-1), n.reshape(-1)


def select_triplets(labels, ref_labels, self_ref: bool, indices_tuple, per_anchor, B: int, R: int, device):
    """The triplets a triplet-type loss uses: the given tuple (pairs converted), else every triplet
    (per_anchor "all") or per_anchor random ones per anchor (PML's triplets_per_anchor)."""
    if indices_tuple is not None:
        return as_triplets(indices_tuple, B, R, device)
    if per_anchor == "all":
        return all_triplets(labels, ref_labels, self_ref)
    return random_triplets(labels, ref_labels, self_ref, per_anchor)


def as_triplets(indices_tuple, B: int, R: int, device):
    """indices_tuple -> (a, p, n): triplets as they are; pairs (a1, p, a2, n) -> every (a1, p, n) with
    a1 == a2, in PML's order (convert_to_triplets)."""
    t = check_indices_tuple(indices_tuple, B, R, device)
    if len(t) == 3:
        return t
    a1, p, a2, n = t
    pi, ni = torch.where(a1[:, None] == a2[None, :])
    return a1[pi], p[pi], n[ni]
