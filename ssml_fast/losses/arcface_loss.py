"""ArcFaceLoss (additive angular margin, Deng et al. 2019)."""
from __future__ import annotations

import math

import torch

from ._margin_softmax import MarginSoftmaxLoss


def arcface_psi(c: torch.Tensor, margin_rad: float) -> torch.Tensor:
    """cos(theta + m) while theta <= pi - m, else cos(theta) - m sin(m) (PML's and insightface's branch that
    keeps the target logit decreasing in theta). cos(theta + m) = c cos m - sin(theta) sin m with
    sin(theta) = sqrt(1 - c^2) floored at the smallest normal number: the value is exact to 1e-19 and
    the gradient stays finite at c = +-1 (acos, as PML differentiates it, is infinite there)."""
    c = c.clamp(-1, 1)
    sin_t = torch.sqrt((1 - c * c).clamp_min(torch.finfo(c.dtype).tiny))
    plus = c * math.cos(margin_rad) - sin_t * math.sin(margin_rad)
    # theta <= pi - m  <=>  cos(theta) >= cos(pi - m) = -cos(m)
    return torch.where(c >= -math.cos(margin_rad), plus, c - margin_rad * math.sin(margin_rad))


class ArcFaceLoss(MarginSoftmaxLoss):
    """-log softmax_y(l_i), l_ij = scale cos theta_ij (j != y_i), l_iy = scale psi(theta_iy), psi =
    `arcface_psi`: cos(theta + m) with the margin m in degrees (PML's unit).

    PML's ArcFaceLoss(num_classes, embedding_size, margin=28.6, scale=64, *, weight_init_func=normal,
    weight_regularizer=None, weight_reg_weight=1, reducer=MeanReducer(), embedding_regularizer=None, ...).
    `W` (embedding_size, num_classes) is learnable (N(0, 1) init, normalised per column in the loss).
    self.margin holds the margin in radians after construction, as PML's. margin must lie in [0, 180)
    degrees, scale > 0. Labels must be class ids in [0, num_classes); indices_tuple weights samples by
    count / max count.
    Call: loss(embeddings (B, embedding_size), labels (B,), indices_tuple=None).
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 28.6, scale: float = 64, *,
                 distance=None, reducer=None, weight_regularizer=None, weight_reg_weight: float = 1.0,
                 weight_init_func=None, embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        super().__init__(num_classes, embedding_size, margin, scale, distance=distance,
                         reducer=reducer, weight_regularizer=weight_regularizer,
                         weight_reg_weight=weight_reg_weight, weight_init_func=weight_init_func,
                         embedding_regularizer=embedding_regularizer, embedding_reg_weight=embedding_reg_weight)

    def check_margin(self, margin):
        deg = super().check_margin(margin)
        if not 0 <= deg < 180:
            raise ValueError(f"margin is an angle in degrees and must lie in [0, 180), got {margin}")
        return math.radians(deg)

    def target_psi(self, cos_t):
        return arcface_psi(cos_t, self.margin)
