"""RelaxedContrastiveLoss (STML, Kim et al. 2022; thesis eq 3.21) and the relative distance it uses."""
from __future__ import annotations

import torch
from torch import nn

from .. import _validation as _checks
from .. import ops
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
    gradient: dL/dd_ij = (x_ij - (1/c) sum_l x_il rel_il) / mu_i for upstream x (0 at j = i), each one fused
    row op (ssml_fast.ops.row_relative / row_relative_backward)."""

    @staticmethod
    def forward(ctx, d, eps):
        # The GEMM form leaves ~sqrt(eps) noise on the diagonal: the op's row sum skips it, and rel_ii = 0.
        rel, inv = ops.row_relative(d, eps)
        ctx.save_for_backward(rel, inv)
        return rel

    @staticmethod
    def backward(ctx, grad):
        rel, inv = ctx.saved_tensors
        return ops.row_relative_backward(grad, rel, inv), None


class _RelaxedContrastiveSum(torch.autograd.Function):
    """scale * sum_i sum_{j != i} w_ij d_ij^2 + (1 - w_ij) [delta - d_ij]_+^2 over an (n, c) matrix (c >= n;
    the self pair of row i is column i); the fused op returns its gradient 2 (w d - (1 - w) [delta - d]_+)
    with the value, so the backward is one product."""

    @staticmethod
    def forward(ctx, d, w, delta, scale):
        value, grad = ops.relaxed_contrastive_rows(d, w, delta, scale)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None


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
        dist = dist.to(_checks.compute_dtype(dist))
        return _RelaxedContrastiveSum.apply(dist, weights.detach().to(dist.dtype), float(self.delta), 1.0 / n)

    def sum_and_grad(self, dist: torch.Tensor, weights: torch.Tensor, scale: float = 1.0, push_cols: int = -1):
        """(scale * the pair sum above, its gradient in dist), without autograd: the fused kernel behind
        from_distances, for callers that chain several terms into one autograd node (STMLLoss). dist (n, c)
        float32 / float64, weights of its dtype; columns j >= push_cols (>= 0) without the push part."""
        return ops.relaxed_contrastive_rows(dist, weights, self.delta, scale, push_cols)
