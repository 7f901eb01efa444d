"""RelaxedContrastiveLoss (STML, Kim et al. 2022; thesis eq 3.21) and the relative distance it uses."""
from __future__ import annotations

import torch
from torch import nn

from .. import _validation as _checks
from . import _pairs


def relative_distance(embeddings: torch.Tensor, eps: float = 1e-12, memory: torch.Tensor | None = None) -> torch.Tensor:
    """(n, D) -> (n, n): d_ij = ||y_i - y_j|| / (1/n sum_k ||y_i - y_k||), the row mean including the
    zero self-distance (eq 3.21). A row whose mean is 0 (all points equal) is divided by eps, i.e. gives 0.

    memory: optional (m, D) constant rows appended as columns (STML with a memory): (n, n + m), the row mean
    over all n + m columns; the memory takes no gradient (its backward GEMM is skipped)."""
    d = _pairs.distance(embeddings, None, "euclidean")
    if memory is not None:
        d = torch.cat([d, _pairs.distance(embeddings, memory.detach().to(embeddings.dtype), "euclidean")], dim=1)
    return _RowRelative.apply(d, eps)


class _RowRelative(torch.autograd.Function):
    """d / (row mean of d) with the self-distances d_ii (column i of row i) taken as exactly 0, value and
    gradient: dL/dd_ij = (x_ij - (1/c) sum_l x_il rel_il) / mu_i for upstream x (0 at j = i). Closed form:
    three passes in the backward instead of autograd through masked_fill, mean, clamp and div."""

    @staticmethod
    def forward(ctx, d, eps):
        n, c = d.shape
        diag = torch.arange(n, device=d.device)
        # The GEMM form leaves ~sqrt(eps) noise on the diagonal: the row sum without it, then rel_ii = 0.
        row_sum = d.sum(dim=1) - d[diag, diag] if n else d.sum(dim=1)
        inv = 1.0 / (row_sum / c).clamp_min(eps) if c else row_sum
        rel = d * inv[:, None]
        rel[diag, diag] = 0.0
        ctx.save_for_backward(rel, inv)
        return rel

    @staticmethod
    def backward(ctx, grad):
        rel, inv = ctx.saved_tensors
        n, c = rel.shape
        s = (grad * rel).sum(dim=1) / c
        out = (grad - s[:, None]).mul_(inv[:, None])
        diag = torch.arange(n, device=rel.device)
        out[diag, diag] = 0.0
        return out, None


class _RelaxedContrastiveSum(torch.autograd.Function):
    """sum_i sum_{j != i} w_ij d_ij^2 + (1 - w_ij) [delta - d_ij]_+^2 over an (n, c) matrix (c >= n; the
    self pair of row i is column i) with its closed-form gradient 2 (w d - (1 - w) [delta - d]_+)."""

    @staticmethod
    def forward(ctx, d, w, delta):
        n = d.shape[0]
        diag = torch.arange(n, device=d.device)
        r = torch.clamp_min(delta - d, 0.0)
        rr = r * r
        term = torch.mul(d, d).sub_(rr).mul_(w).add_(rr)   # w d^2 + (1 - w) r^2
        term[diag, diag] = 0.0
        grad = torch.add(d, r).mul_(w).sub_(r).mul_(2.0)   # 2 (w (d + r) - r)
        grad[diag, diag] = 0.0
        ctx.save_for_backward(grad)
        return term.sum()

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None


def _check_square(name, w, n, device):
    _checks.check_tensor(name, w)
    if w.shape != (n, n):
        raise ValueError(f"{name} must have shape ({n}, {n}), got {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {w.dtype}")
    _checks.check_same_device(name, w, device)


class RelaxedContrastiveLoss(nn.Module):
    """L = 1/n sum_i sum_{j != i} w_ij d_ij^2 + 1/n sum_i sum_{j != i} (1 - w_ij) [delta - d_ij]_+^2   (eq 3.21)

    d = relative_distance(embeddings) (row-mean-normalised euclidean distance), w in [0, 1] soft targets
    (STML's contextualised similarities, from the teacher; treated as constants), delta the margin.
    Call: loss(embeddings (n, D), weights (n, n)) -> 0-d. The diagonal of weights is ignored.
    (STML's released code divides by n (n - 1) instead of n; multiply by 1/(n - 1) to match it.)
    """

    def __init__(self, delta: float = 1.0):
        super().__init__()
        self.delta = _checks.check_nonnegative("delta", delta)

    def forward(self, embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        _checks.check_embeddings("embeddings", embeddings)
        n = embeddings.shape[0]
        _check_square("weights", weights, n, embeddings.device)
        if n and (bool((weights < 0).any()) or bool((weights > 1).any()) or bool(weights.isnan().any())):
            raise ValueError("weights must lie in [0, 1]")
        if n < 2:
            return _pairs.zero_loss(embeddings)
        with _pairs.autocast_off(embeddings):
            return self.from_distances(relative_distance(embeddings), weights)

    def from_distances(self, dist: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The same loss from a precomputed (n, n) relative distance (e.g. shared with the KL term of STML,
        which needs the same matrix); weights as in forward (not re-validated here). dist may also be
        (n, c) with c > n, rows of a batch against [batch; other columns] (STML with a memory): the pairs
        are every (i, j != i), divided by n."""
        n = dist.shape[0]
        if n < 2 and dist.shape[1] < 2:
            return _pairs.zero_loss(dist)
        return _RelaxedContrastiveSum.apply(dist, weights.detach().to(dist.dtype), float(self.delta)) / n
