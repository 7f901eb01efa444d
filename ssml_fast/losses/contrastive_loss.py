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
            s = _pairs.similarity(embeddings, ref_emb, "cosine")
            pos_l, neg_l = torch.relu(self.pos_margin - s), torch.relu(s - self.neg_margin)
        else:
            d = _pairs.distance(embeddings, ref_emb, self.distance)
            pos_l, neg_l = torch.relu(d - self.pos_margin), torch.relu(self.neg_margin - d)
            if self.form == "hadsell":
                pos_l, neg_l = 0.5 * pos_l.square(), 0.5 * neg_l.square()
        pos_w, neg_w = _pairs.pair_weights(labels, ref_labels, indices_tuple, B, R, ref_emb is None,
                                           pos_l.dtype, pos_l.device)
        return (_pairs.reduce_pairs(pos_l, pos_w, self.reduction)
                + _pairs.reduce_pairs(neg_l, neg_w, self.reduction))
