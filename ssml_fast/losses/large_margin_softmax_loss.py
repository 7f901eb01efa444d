"""LargeMarginSoftmaxLoss (L-Softmax, Liu et al. 2016): the multiplicative angular margin cos(m theta)."""
from __future__ import annotations

import math

import torch

from ._margin_softmax import MarginSoftmaxLoss


def chebyshev_cos_multiple(c: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m theta) as the Chebyshev polynomial T_m(cos theta): T_0 = 1, T_1 = c, T_{n+1} = 2 c T_n - T_{n-1}.
    The same polynomial as the paper's eq. 7 (sum_n (-1)^n C(m, 2n) c^(m-2n) (1 - c^2)^n, which PML
    evaluates term by term), by a recurrence that does not cancel large binomial terms."""
    t_prev, t = torch.ones_like(c), c
    if m == 0:
        return t_prev
    for _ in range(m - 1):
        t_prev, t = t, 2 * c * t - t_prev
    return t


def large_margin_psi(c: torch.Tensor, m: int) -> torch.Tensor:
    """psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi / m, (k + 1) pi / m] (eq. 6), theta =
    acos(c): monotonically decreasing in theta over [0, pi]. k is a constant of the gradient, as in the
    paper and PML."""
    with torch.no_grad():
        k = torch.floor(torch.acos(c.clamp(-1, 1)) / (math.pi / m))
        sign = 1 - 2 * torch.remainder(k, 2)
    return sign * chebyshev_cos_multiple(c, m) - 2 * k


class LargeMarginSoftmaxLoss(MarginSoftmaxLoss):
    """-log softmax_y(l_i), l_ij = scale |x_i| |W_j| cos theta_ij for j != y_i and
    l_iy = scale |x_i| |W_y| psi(theta_iy), psi as `large_margin_psi` with the integer margin m.

    PML's LargeMarginSoftmaxLoss(num_classes, embedding_size, margin=4, scale=1, *, weight_init_func=normal,
    weight_regularizer=None, weight_reg_weight=1, reducer=MeanReducer(), embedding_regularizer=None, ...).
    `W` (embedding_size, num_classes) is learnable, N(0, 1) initialised (PML's default weight_init_func).
    margin must be an integer >= 1 (PML truncates a float silently with int(); a non-integer multiple
    angle has no polynomial form, so it is an error here). distance must be CosineSimilarity (PML asserts
    it). With an indices_tuple each sample's loss is weighted by count / max count (PML's
    convert_to_weights). Labels must be class ids in [0, num_classes).
    Call: loss(embeddings (B, embedding_size), labels (B,), indices_tuple=None).
    """

    scale_by_embedding_norm = True
    scale_by_weight_norm = True

    def __init__(self, num_classes: int, embedding_size: int, margin: int = 4, scale: float = 1, *,
                 distance=None, reducer=None, weight_regularizer=None, weight_reg_weight: float = 1.0,
                 weight_init_func=None, embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        super().__init__(num_classes, embedding_size, margin, scale, distance=distance, reducer=reducer,
                         weight_regularizer=weight_regularizer, weight_reg_weight=weight_reg_weight,
                         weight_init_func=weight_init_func, embedding_regularizer=embedding_regularizer,
                         embedding_reg_weight=embedding_reg_weight)

    def check_margin(self, margin):
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin != margin:
            raise TypeError(f"margin must be an integer, got {margin!r}")
        if margin != int(margin) or margin < 1:
            raise ValueError(f"margin must be an integer >= 1 (the angle multiple m), got {margin}")
        return int(margin)

    def target_psi(self, cos_t):
        return large_margin_psi(cos_t, self.margin)
