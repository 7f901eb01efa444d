"""ContrastiveLoss: pair losses over the whole B x R matrix (PML margin form, Hadsell form, eq 2.2 cosine form)."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import distances as _distances
from .. import reducers as _reducers
from .. import _validation as _checks
from . import _pairs
from .base import MetricLoss

FORMS = ("margin", "hadsell", "cosine")
_DEFAULT_MARGINS = {"margin": (0.0, 1.0), "hadsell": (0.0, 1.0), "cosine": (1.0, 0.5)}


class ContrastiveLoss(MetricLoss):
    """Every positive pair pulled, every negative pair pushed, reduced per term and summed (PML's
    ContrastiveLoss(pos_margin=0, neg_margin=1, *, distance=LpDistance(), reducer=AvgNonZeroReducer())).

    form (d = `distance` between the two embeddings; for a similarity s, PML's margins on the similarity):
      "margin"  (PML ContrastiveLoss): pos relu(d - pos_margin), neg relu(neg_margin - d); with a similarity
                pos relu(pos_margin - s), neg relu(s - neg_margin).
      "hadsell" (Hadsell et al. 2006, slides): pos 0.5 relu(d - pos_margin)^2, neg 0.5 relu(neg_margin - d)^2;
                with distance="euclidean" and pos_margin=0 this is 0.5 y d^2 + 0.5 (1 - y) max(0, m - d)^2.
      "cosine"  (thesis eq 2.2): the margin form on the cosine similarity (distance CosineSimilarity()).
                The defaults pos_margin=1, neg_margin=lambda give eq 2.2's (1 - I)[s - lambda]_+ - I s up to
                the constant +1 per positive pair (same gradient; a perfect positive costs 0).
    Default margins: (0, 1) for "margin"/"hadsell", (1, 0.5) for "cosine".
    distance: a distance object (ours or PML's), or "euclidean" | "sqeuclidean" | "cosine" (1 - cos) on the
      raw embeddings; default LpDistance() (L2-normalised embeddings, as PML).
    reducer (or reduction: "mean_nonzero" (PML default AvgNonZeroReducer) | "mean" | "sum"), applied to the
      positive and the negative term separately and then summed (as PML does); these three run in one fused
      pass over the B x R matrix, any other reducer gets PML's per-pair losses.
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None).
    Pairs come from the labels (a sample is never paired with itself) or from indices_tuple; a pair mined
    k times counts k times, as in PML.
    """

    def __init__(self, pos_margin: float | None = None, neg_margin: float | None = None, distance=None,
                 form: str = "margin", reduction: str | None = None, *, reducer=None,
                 embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        self.form = _checks.check_choice("form", form, FORMS)
        if reduction is not None:
            _checks.check_choice("reduction", reduction, _pairs.REDUCTIONS)
            if reducer is not None:
                raise ValueError("give reducer or reduction, not both")
            reducer = _reducers.from_reduction(reduction)
        if form == "cosine" and (distance is None or isinstance(distance, str)):
            distance = _distances.CosineSimilarity()  # the form is defined on the similarity
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight)
        dp, dn = _DEFAULT_MARGINS[form]
        self.pos_margin = dp if pos_margin is None else _pairs.check_real("pos_margin", pos_margin)
        self.neg_margin = dn if neg_margin is None else _pairs.check_real("neg_margin", neg_margin)

    def default_reducer(self):
        return _reducers.AvgNonZeroReducer()

    @property
    def reduction(self):
        return self.reduction_kind

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        x = self.matrix(embeddings, ref_emb)
        sign = -1.0 if self.distance.is_inverted else 1.0
        squared = self.form == "hadsell"
        kind = self.reduction_kind
        if kind is not None:
            if indices_tuple is None:
                pos_w, neg_w = _pairs.label_masks(labels, ref_labels, ref_emb is None)
            else:
                pos_w, neg_w = _pairs.pair_weights(None, None, indices_tuple, B, R, ref_emb is None, x.dtype,
                                                   x.device)
            return _ContrastiveFromMatrix.apply(x, pos_w, neg_w, self.pos_margin, self.neg_margin, sign,
                                                squared, kind)
        if indices_tuple is None:
            pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
            a1, p = torch.where(pos)
            a2, n = torch.where(neg)
        else:
            a1, p, a2, n = _pairs.as_pairs(indices_tuple, B, R, x.device)
        out = {}
        for key, (a, o, margin, is_pos) in (("pos_loss", (a1, p, self.pos_margin, True)),
                                           ("neg_loss", (a2, n, self.neg_margin, False))):
            if a.numel() == 0:
                out[key] = {"losses": 0, "indices": None, "reduction_type": "already_reduced"}
                continue
            v = _ContrastiveFromMatrix._violation(x[a, o], margin, sign, is_pos).clamp_min(0)
            out[key] = {"losses": 0.5 * v.square() if squared else v, "indices": (a, o),
                        "reduction_type": "pos_pair" if is_pos else "neg_pair"}
        return self.reduce(out, embeddings, labels)


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
    @once_differentiable
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
