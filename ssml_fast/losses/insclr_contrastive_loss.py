"""InsCLRContrastiveLoss (Deng et al. 2022; thesis eqs 3.9 / 3.14)."""
from __future__ import annotations

import torch

from ..ops import _checks
from . import _pairs
from .base import MetricLoss

REDUCTIONS = ("sum", "mean")


class InsCLRContrastiveLoss(MetricLoss):
    """sum_{positive pairs} (1 - s+) + sum_{negative pairs with s- > lambda_} s-,  s = cosine similarity.

    Positives / negatives from labels (pseudo-labels: an anchor and its mined neighbours share one) or
    from indices_tuple (pairs mined k times count k times); ref_emb / ref_labels compare against a
    memory bank. reduction: "sum" (the formula) or "mean" (divided by the number of anchors B).
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None).
    """

    def __init__(self, lambda_: float = 0.4, reduction: str = "sum"):
        super().__init__()
        self.lambda_ = _pairs.check_real("lambda_", lambda_)
        self.reduction = _checks.check_choice("reduction", reduction, REDUCTIONS)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        s = _pairs.similarity(embeddings, ref_emb, "cosine")
        pos_w, neg_w = _pairs.pair_weights(labels, ref_labels, indices_tuple, B, R, ref_emb is None,
                                           s.dtype, s.device)
        hard = (s.detach() > self.lambda_).to(s.dtype)
        total = ((1 - s) * pos_w).sum() + (s * hard * neg_w).sum()
        return total / max(B, 1) if self.reduction == "mean" else total
