"""ContrastiveLoss: pair losses over the whole B x R matrix (PML margin form, Hadsell form, eq 2.2 cosine form)."""
from __future__ import annotations

import torch

from .. import ops
from ..ops import _checks
from . import _pairs
from .base import MetricLoss

FORMS = ("margin", "hadsell", "cosine")
_DEFAULT_MARGINS = {"margin": (0.0, 1.0), "hadsell": (0.0, 1.0), "cosine": (1.0, 0.5)}


class ContrastiveLoss(MetricLoss):
    """Every positive pair pulled, every negative pair pushed, reduced per term and summed.

    form (d = `distance` between the two embeddings, s = cosine similarity):
      "margin"  (PML ContrastiveLoss): pos relu(d - pos_margin), neg relu(neg_margin - d).
      "hadsell" (Hadsell et al. 2006, slides): pos 0.5 relu(d - pos_margin)^2, neg 0.5 relu(neg_margin - d)^2;
                with distance="euclidean" and pos_margin=0 this is 0.5 y d^2 + 0.5 (1 - y) max(0, m - d)^2.
      "cosine"  (thesis eq 2.2, margins on the similarity as PML does with CosineSimilarity):
                pos relu(pos_margin - s), neg relu(s - neg_margin). The defaults pos_margin=1, neg_margin=
                lambda give eq 2.2's (1 - I)[s - lambda]_+ - I s up to the constant +1 per positive pair
                (same gradient; a perfect positive costs 0 so "mean_nonzero" stays meaningful).
    Default margins: (0, 1) for "margin"/"hadsell", (1, 0.5) for "cosine".
    distance: "euclidean" | "sqeuclidean" | "cosine" (1 - cos) for "margin"/"hadsell"; unused by "cosine".
    reduction, applied to the positive and the negative term separately and then summed (as PML does):
      "mean_nonzero" (PML default AvgNonZeroReducer), "mean", "sum".
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None).
    Pairs come from the labels (a sample is never paired with itself) or from indices_tuple; a pair mined
    k times counts k times, as in PML.
    """

    def __init__(self, pos_margin: float | None = None, neg_margin: float | None = None,
                 distance: str = "euclidean", form: str = "margin", reduction: str = "mean_nonzero"):
        super().__init__()
        self.form = _checks.check_choice("form", form, FORMS)
        dp, dn = _DEFAULT_MARGINS[form]
        self.pos_margin = dp if pos_margin is None else _pairs.check_real("pos_margin", pos_margin)
        self.neg_margin = dn if neg_margin is None else _pairs.check_real("neg_margin", neg_margin)
        self.distance = _checks.check_choice("distance", distance, ops.DISTANCES)
        self.reduction = _checks.check_choice("reduction", reduction, _pairs.REDUCTIONS)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        if self.form == "cosine":
            x, sign = _pairs.similarity(embeddings, ref_emb, "cosine"), -1.0
        else:
            x, sign = _pairs.distance(embeddings, ref_emb, self.distance), 1.0
        if indices_tuple is None:
            pos_w, neg_w = _pairs.label_masks(labels, ref_labels, ref_emb is None)
        else:
            pos_w, neg_w = _pairs.pair_weights(None, None, indices_tuple, B, R, ref_emb is None, x.dtype, x.device)
        return _ContrastiveFromMatrix.apply(x, pos_w, neg_w, self.pos_margin, self.neg_margin, sign,
                                            self.form == "hadsell", self.reduction)


class _ContrastiveFromMatrix(torch.autograd.Function):
    """Both reduced pair terms from the (B, R) matrix x in a few elementwise passes, with the analytic
    backward (no autograd graph over the matrix).
    Violations: pos v+ = sign (x - pos_margin), neg v- = sign (neg_margin - x); sign = +1 for a distance,
    -1 for a similarity. Per-pair loss relu(v) (or 0.5 relu(v)^2), weighted by the pair masks (bool) or
    multiplicities (float), each term divided by its count (all pairs, active pairs, or 1 for "sum");
    the counts are constants of the backward pass, as in PML."""

    @staticmethod
    def _violation(x, margin, sign, is_pos):
        # sign (x - margin) for positives, sign (margin - x) for negatives, in one pass
        return x - margin if (sign > 0) == is_pos else margin - x

    @staticmethod
    def forward(ctx, x, pos_w, neg_w, pos_margin, neg_margin, sign, squared, reduction):
        out, scales = 0, []
        for w, margin, is_pos in ((pos_w, pos_margin, True), (neg_w, neg_margin, False)):
            h = _ContrastiveFromMatrix._violation(x, margin, sign, is_pos).clamp_min_(0)
            per = h.square_().mul_(0.5) if squared else h
            total = _weighted(per, w).sum()
            if reduction == "sum":
                count = torch.ones((), dtype=x.dtype, device=x.device)
            elif reduction == "mean":
                count = _count(w, x.dtype)
            else:
                count = _count(_weighted(per > 0, w), x.dtype)
            scale = torch.where(count > 0, 1.0 / count.clamp_min(1), torch.zeros_like(count))
            out = out + total * scale
            scales.append(scale)
        ctx.save_for_backward(x, pos_w, neg_w, *scales)
        ctx.consts = (pos_margin, neg_margin, sign, squared)
        return out

    @staticmethod
    def backward(ctx, g):
        x, pos_w, neg_w, sp, sn = ctx.saved_tensors
        pos_margin, neg_margin, sign, squared = ctx.consts
        grad = None
        for w, margin, is_pos, scale in ((pos_w, pos_margin, True, sp), (neg_w, neg_margin, False, sn)):
            h = _ContrastiveFromMatrix._violation(x, margin, sign, is_pos).clamp_min_(0)
            dv_dx = sign if is_pos else -sign
            d = h if squared else (h > 0)
            term = _weighted(d, w).to(x.dtype).mul_(scale * dv_dx)
            grad = term if grad is None else grad.add_(term)
        return grad.mul_(g), None, None, None, None, None, None, None


def _weighted(v, w):
    """v (float, or a bool indicator) restricted to the pairs: masked by a bool w, or times float counts w."""
    if w.dtype != torch.bool:
        return v * w
    return v & w if v.dtype == torch.bool else torch.where(w, v, 0.0)


def _count(w, dtype):
    # count_nonzero avoids summing a bool matrix (which first copies it to int64)
    return (torch.count_nonzero(w) if w.dtype == torch.bool else w.sum()).to(dtype)
