"""LiftedStructureLoss: Song et al.'s per-positive-pair form and the generalized per-anchor form (eq 2.5)."""
from __future__ import annotations

import torch

from .. import ops
from ..ops import _checks
from . import _pairs
from .base import MetricLoss


class LiftedStructureLoss(MetricLoss):
    """Lifted structured loss over all pairs of the batch, with d = `distance`.

    generalized=False (Song et al. 2016; PML LiftedStructureLoss): for each positive pair (i, j),
        J_ij = relu( log[ sum_{n in N(i)} e^{neg_margin - d_in} + sum_{n in N(j)} e^{neg_margin - d_jn} ]
                     + d_ij - pos_margin )^2 / 2,
      averaged over positive pairs ((i, j) and (j, i) both count, hence the / 2). An anchor pair with no
      negatives uses 0 for the log-sum-exp (as PML does).
    generalized=True (thesis eq 2.5; Hermans et al.; PML GeneralizedLiftedStructureLoss): per anchor i,
        relu( log sum_{k in P_i} e^{d_ik - pos_margin} + log sum_{k in N_i} e^{neg_margin - d_ik} ),
      averaged over all B anchors (an empty set contributes 0). Eq 2.5 is written with a similarity S:
      with distance="cosine" (d = 1 - S) it is pos_margin = 1 - lambda, neg_margin = 1.
    distance: "euclidean" (default) | "sqeuclidean" | "cosine".
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None).
    In the per-pair form the negatives of j are looked up in row j, so it needs the batch as reference
    (no ref_emb) unless generalized=True.
    """

    def __init__(self, neg_margin: float = 1.0, pos_margin: float = 0.0, distance: str = "euclidean",
                 generalized: bool = False):
        super().__init__()
        self.neg_margin = _pairs.check_real("neg_margin", neg_margin)
        self.pos_margin = _pairs.check_real("pos_margin", pos_margin)
        self.distance = _checks.check_choice("distance", distance, ops.DISTANCES)
        self.generalized = bool(generalized)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        if ref_emb is not None and not self.generalized:
            raise ValueError("ref_emb is only supported with generalized=True")
        d = _pairs.distance(embeddings, ref_emb, self.distance)
        pos_w, neg_w = _pairs.pair_weights(labels, ref_labels, indices_tuple, B, R, ref_emb is None,
                                           d.dtype, d.device)
        if self.generalized:
            pos_w, neg_w = (pos_w > 0).to(d.dtype), (neg_w > 0).to(d.dtype)
            pos = _pairs.masked_logsumexp(d - self.pos_margin, pos_w, dim=1, empty=0.0)
            neg = _pairs.masked_logsumexp(self.neg_margin - d, neg_w, dim=1, empty=0.0)
            return torch.relu(pos + neg).mean()
        neg_lse = _pairs.masked_logsumexp(self.neg_margin - d, neg_w, dim=1)  # (B,), -inf if none
        has = torch.isfinite(neg_lse)
        lse = torch.where(has, neg_lse, torch.zeros_like(neg_lse))  # finite, so no NaN in backward
        a, b, ha, hb = lse[:, None], lse[None, :], has[:, None], has[None, :]
        both = torch.where(ha & hb, torch.logaddexp(a, b), torch.where(ha, a, torch.where(hb, b, 0 * a)))
        per_pair = torch.relu(both + d - self.pos_margin).square() / 2
        n_pos = pos_w.sum()
        total = (per_pair * pos_w).sum()
        return torch.where(n_pos > 0, total / n_pos.clamp_min(1), total * 0)
