"""MultiSimilarityLoss (thesis eq 2.7; Wang et al. 2019) over the full B x R similarity matrix."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import distances as _distances
from .. import _validation as _checks
from . import _pairs
from .base import MetricLoss


class MultiSimilarityLoss(MetricLoss):
    """mean_i { 1/alpha log[1 + sum_{k in P_i} e^{-alpha (S_ik - base)}]
               + 1/beta log[1 + sum_{k in N_i} e^{beta (S_ik - base)}] }   (eq 2.7, lambda = base)

    PML's MultiSimilarityLoss(alpha=2, beta=50, base=0.5, *, distance=CosineSimilarity(), reducer=MeanReducer()).
    The mean runs over all B anchors (an anchor without positives / negatives contributes 0 for that
    term). With a distance instead of a similarity (not is_inverted) the signs flip as in PML
    (margin(d, base)). similarity (ours): "cosine" | "dot" (a distance as a string).
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None).
    With indices_tuple (e.g. from MultiSimilarityMiner) only the mined pairs enter the sums (each once,
    as PML's mask-based losses do). MeanReducer / SumReducer run fused; any other reducer gets PML's
    per-anchor element losses.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, similarity: str | None = None,
                 *, distance=None, reducer=None, embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        if similarity is not None:
            _checks.check_choice("similarity", similarity, _pairs.SIMILARITIES)
            if distance is not None:
                raise ValueError("give distance or similarity, not both")
            distance = similarity
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight,
                         distance_strings=_distances.similarity_strings())
        self.alpha = _pairs.check_positive("alpha", alpha)
        self.beta = _pairs.check_positive("beta", beta)
        self.base = _pairs.check_real("base", base)

    def default_distance(self):
        return _distances.CosineSimilarity()

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        fm = _distances.fused_metric(self.distance)
        if fm is not None and fm[0] == "cosine" and self.distance.is_inverted:
            x, shift, sign = _pairs.distance(embeddings, ref_emb, "cosine"), 1.0 - self.base, -1.0  # s = 1 - d
        else:
            x = self.matrix(embeddings, ref_emb)
            # t = s - base for a similarity; base - d for a distance (PML's margin(d, base) negated)
            shift, sign = (-self.base, 1.0) if self.distance.is_inverted else (self.base, -1.0)
        if indices_tuple is None:
            pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
        else:
            pos_w, neg_w = _pairs.pair_weights(None, None, indices_tuple, B, R, ref_emb is None, x.dtype, x.device)
            pos, neg = pos_w > 0, neg_w > 0
        kind = self.reduction_kind
        if kind in ("mean", "sum"):
            out = _MultiSimilarity.apply(x, pos, neg, shift, sign, self.alpha, self.beta)
            return out * B if kind == "sum" else out
        t = x * sign + shift
        per = (_lse1(-self.alpha * t, pos) / self.alpha) + (_lse1(self.beta * t, neg) / self.beta)
        return self.reduce({"loss": {"losses": per, "indices": torch.arange(B, device=x.device),
                                     "reduction_type": "element"}}, embeddings, labels)


def _lse1(z, mask):
    """log(1 + sum_mask e^z) per row, 0 for a row without entries (PML's logsumexp with add_one)."""
    z = torch.where(mask, z, -torch.inf)
    m = z.amax(dim=1, keepdim=True).clamp_min(0).detach()
    out = (torch.exp(z - m).sum(dim=1, keepdim=True) + torch.exp(-m)).log() + m
    return torch.where(mask.any(dim=1, keepdim=True), out, 0.0).squeeze(1)


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
    @once_differentiable
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None, None, None, None
