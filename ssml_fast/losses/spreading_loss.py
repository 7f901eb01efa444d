"""SpreadingLoss: invariant and spreading instance features (Ye et al. 2019; thesis eqs 3.1-3.5)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import _checks
from . import _pairs


class SpreadingLoss(nn.Module):
    """Instance-discrimination loss over the 2B unit vectors of a batch and its augmented view.

    With y the 2B L2-normalised embeddings (originals then augmentations, i's positive is i +- B) and
    P_ij = exp(y_i . y_j / T) / sum_{k != i} exp(y_i . y_k / T)   (softmax over the other 2B - 1),
        J = -1/(2B) sum_i [ log P_{i, pos(i)} + sum_{j != i, pos(i)} log(1 - P_ij) ]      (eq 3.5),
    as in the authors' code (BatchCriterion): the second factor of every inner product is detached, so
    the gradient flows through the anchor row only. T = temperature (0.1).
    Call: loss(embeddings (B, D), augmented (B, D)) -> 0-d; augmented[i] is a view of embeddings[i].
    B = 1 gives 0 (one positive, no negatives) with zero gradient.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = _pairs.check_positive("temperature", temperature)

    def forward(self, embeddings: torch.Tensor, augmented: torch.Tensor) -> torch.Tensor:
        _checks.check_embeddings("embeddings", embeddings)
        _checks.check_embeddings("augmented", augmented)
        if augmented.shape != embeddings.shape:
            raise ValueError(f"augmented must have the shape of embeddings {tuple(embeddings.shape)}, "
                             f"got {tuple(augmented.shape)}")
        _checks.check_same_device("augmented", augmented, embeddings.device)
        dtype = _checks.compute_dtype(embeddings)
        B = embeddings.shape[0]
        if B == 0:
            return _pairs.zero_loss(embeddings, augmented)
        y = F.normalize(torch.cat([embeddings, augmented]).to(dtype), dim=1)
        logits = (y @ y.detach().T) / self.temperature  # (2B, 2B)
        n = 2 * B
        eye = torch.eye(n, dtype=torch.bool, device=y.device)
        logits = logits.masked_fill(eye, -torch.inf)
        log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        idx = torch.arange(n, device=y.device)
        pos_col = (idx + B) % n
        log_pos = log_p[idx, pos_col]
        neg = ~eye
        neg[idx, pos_col] = False
        log_not = _log1mexp(torch.where(neg, log_p, torch.full_like(log_p, -1.0)))
        return -(log_pos.sum() + (log_not * neg).sum()) / n


def _log1mexp(x):
    """log(1 - e^x) for x < 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
