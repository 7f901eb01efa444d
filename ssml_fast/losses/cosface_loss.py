"""CosFaceLoss (large margin cosine loss, Wang et al. 2018)."""
from __future__ import annotations

from ._margin_softmax import MarginSoftmaxLoss


class CosFaceLoss(MarginSoftmaxLoss):
    """-log softmax_y(l_i), l_ij = scale cos theta_ij (j != y_i), l_iy = scale (cos theta_iy - margin).

    PML's CosFaceLoss(num_classes, embedding_size, margin=0.35, scale=64, *, weight_init_func=normal,
    weight_regularizer=None, weight_reg_weight=1, reducer=MeanReducer(), embedding_regularizer=None, ...).
    `W` (embedding_size, num_classes) is learnable (N(0, 1) init, normalised per column in the loss).
    margin: a finite number (the cosine margin), scale > 0. Labels in [0, num_classes).
    Call: loss(embeddings (B, embedding_size), labels (B,), indices_tuple=None).
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.35, scale: float = 64, *,
                 distance=None, reducer=None, weight_regularizer=None, weight_reg_weight: float = 1.0,
                 weight_init_func=None, embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        super().__init__(num_classes, embedding_size, margin, scale, distance=distance, reducer=reducer,
                         weight_regularizer=weight_regularizer, weight_reg_weight=weight_reg_weight,
                         weight_init_func=weight_init_func, embedding_regularizer=embedding_regularizer,
                         embedding_reg_weight=embedding_reg_weight)

    def target_psi(self, cos_t):
        return cos_t - self.margin
