"""SphereFaceLoss (A-Softmax, Liu et al. 2017): L-Softmax with normalised class weights."""
from __future__ import annotations

from .large_margin_softmax_loss import LargeMarginSoftmaxLoss


class SphereFaceLoss(LargeMarginSoftmaxLoss):
    """LargeMarginSoftmaxLoss with |W_j| = 1: l_ij = scale |x_i| cos theta_ij (j != y_i),
    l_iy = scale |x_i| psi(theta_iy), psi(theta) = (-1)^k cos(m theta) - 2k.

    PML's SphereFaceLoss(num_classes, embedding_size, margin=4, scale=1, **kwargs), the same arguments as
    LargeMarginSoftmaxLoss; W (embedding_size, num_classes) is learnable and normalised per column in the
    loss (the parameter itself is left as it is, as in PML).
    """

    scale_by_weight_norm = False
