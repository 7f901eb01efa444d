"""InsCLRContrastiveLoss (Deng et al. 2022; thesis eqs 3.9 / 3.14)."""
from __future__ import annotations

import torch

from .. import _validation as _checks
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
        with torch.no_grad():
            if indices_tuple is None:
                pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
                n_pos = torch.count_nonzero(pos).to(s.dtype)
                coef = (neg & (s > self.lambda_)).to(s.dtype).sub_(pos.to(s.dtype))
            else:
                pos_w, neg_w = _pairs.pair_weights(None, None, indices_tuple, B, R, ref_emb is None, s.dtype, s.device)
                n_pos = pos_w.sum()
                coef = neg_w * (s > self.lambda_) - pos_w
        # sum_pos (1 - s) + sum_{neg, s > lambda} s = n_pos + sum(coef * s): one product over the matrix
        total = n_pos + (s * coef).sum()
        return total / max(B, 1) if self.reduction == "mean" else total
