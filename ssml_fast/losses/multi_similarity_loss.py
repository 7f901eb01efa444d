"""MultiSimilarityLoss (thesis eq 2.7; Wang et al. 2019) over the full B x R similarity matrix."""
from __future__ import annotations

import torch

from ..ops import _checks
from . import _pairs
from .base import MetricLoss


class MultiSimilarityLoss(MetricLoss):
    """mean_i { 1/alpha log[1 + sum_{k in P_i} e^{-alpha (S_ik - base)}]
               + 1/beta log[1 + sum_{k in N_i} e^{beta (S_ik - base)}] }   (eq 2.7, lambda = base)

    The mean runs over all B anchors (an anchor without positives / negatives contributes 0 for that
    term), as in PML's MultiSimilarityLoss. similarity: "cosine" (default) or "dot".
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None).
    With indices_tuple (e.g. from MultiSimilarityMiner) only the mined pairs enter the sums (each once,
    as PML's mask-based losses do).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, similarity: str = "cosine"):
        super().__init__()
        self.alpha = _pairs.check_positive("alpha", alpha)
        self.beta = _pairs.check_positive("beta", beta)
        self.base = _pairs.check_real("base", base)
        self.similarity = _checks.check_choice("similarity", similarity, _pairs.SIMILARITIES)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        s = _pairs.similarity(embeddings, ref_emb, self.similarity)
        pos_w, neg_w = _pairs.pair_weights(labels, ref_labels, indices_tuple, B, R, ref_emb is None,
                                           s.dtype, s.device)
        pos_w, neg_w = (pos_w > 0).to(s.dtype), (neg_w > 0).to(s.dtype)
        pos = _log1p_sum_exp(-self.alpha * (s - self.base), pos_w) / self.alpha
        neg = _log1p_sum_exp(self.beta * (s - self.base), neg_w) / self.beta
        return (pos + neg).mean()


def _log1p_sum_exp(x, w):
    """log(1 + sum_j w_j e^{x_j}) per row, stable: softplus of the masked log-sum-exp."""
    return torch.nn.functional.softplus(_pairs.masked_logsumexp(x, w, dim=1))
