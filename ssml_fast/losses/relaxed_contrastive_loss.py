"""RelaxedContrastiveLoss (STML, Kim et al. 2022; thesis eq 3.21) and the relative distance it uses."""
from __future__ import annotations

import torch
from torch import nn

from .. import _validation as _checks
from . import _pairs


def relative_distance(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(n, D) -> (n, n): d_ij = ||y_i - y_j|| / (1/n sum_k ||y_i - y_k||), the row mean including the
    zero self-distance (eq 3.21). A row whose mean is 0 (all points equal) is divided by eps, i.e. gives 0."""
    d = _pairs.distance(embeddings, None, "euclidean")
    # The GEMM form leaves ~sqrt(eps) noise on the diagonal; the self-distance is exactly 0.
    d = d.masked_fill(torch.eye(d.shape[0], dtype=torch.bool, device=d.device), 0.0)
    return d / d.mean(dim=1, keepdim=True).clamp_min(eps)


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
        which needs the same matrix); weights as in forward (not re-validated here)."""
        n = dist.shape[0]
        if n < 2:
            return _pairs.zero_loss(dist)
        w = weights.detach().to(dist.dtype)
        off = ~torch.eye(n, dtype=torch.bool, device=dist.device)
        pull = w * dist.square()
        push = (1 - w) * torch.relu(self.delta - dist).square()
        return ((pull + push) * off).sum() / n
