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
        if self.similarity == "cosine":
            x, offset, sign = _pairs.distance(embeddings, ref_emb, "cosine"), 1.0, -1.0  # s = 1 - d
        else:
            x, offset, sign = _pairs.similarity(embeddings, ref_emb, "dot"), 0.0, 1.0
        if indices_tuple is None:
            pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
        else:
            pos_w, neg_w = _pairs.pair_weights(None, None, indices_tuple, B, R, ref_emb is None, x.dtype, x.device)
            pos, neg = pos_w > 0, neg_w > 0
        return _MultiSimilarity.apply(x, pos, neg, offset - self.base, sign, self.alpha, self.beta)


class _MultiSimilarity(torch.autograd.Function):
    """mean_i 1/alpha log(1 + sum_P e^{-alpha (s - base)}) + 1/beta log(1 + sum_N e^{beta (s - base)}) with
    s - base = shift + sign * x, and the analytic gradient (the MS pair weights of Wang et al.):
        dL/ds_ik = (-e^{z+_ik} / (1 + sum_P e^{z+}) [k in P_i] + e^{z-_ik} / (1 + sum_N e^{z-}) [k in N_i]) / B,
    evaluated with the row maximum (and 0, for the "1 +") factored out, so it never overflows."""

    @staticmethod
    def forward(ctx, x, pos, neg, shift, sign, alpha, beta):
        t = x * sign + shift  # s - base
        loss = 0
        grad = None
        for mask, scale in ((pos, -alpha), (neg, beta)):
            z = torch.where(mask, t * scale, -torch.inf)
            m = z.amax(dim=1, keepdim=True).clamp_min_(0)  # >= 0 also covers the "1 +" term
            e = z.sub_(m).exp_()
            den = e.sum(dim=1, keepdim=True).add_(torch.exp(-m))
            loss = loss + (den.log() + m).sum() / abs(scale)
            term = e.div_(den).mul_(-1.0 if scale < 0 else 1.0)
            grad = term if grad is None else grad.add_(term)
        B = x.shape[0]
        ctx.save_for_backward(grad.mul_(sign / max(B, 1)))
        return loss / max(B, 1)

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None, None, None, None
