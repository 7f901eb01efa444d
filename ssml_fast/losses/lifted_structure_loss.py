"""LiftedStructureLoss: Song et al.'s per-positive-pair form and the generalized per-anchor form (eq 2.5)."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _pairs
from .base import MetricLoss


class LiftedStructureLoss(MetricLoss):
    """Lifted structured loss over all pairs of the batch, with d = `distance`.

    generalized=False (Song et al. 2016; PML LiftedStructureLoss(neg_margin=1, pos_margin=0)): for each
    positive pair (i, j),
        J_ij = relu( log[ sum_{n in N(i)} e^{neg_margin - d_in} + sum_{n in N(j)} e^{neg_margin - d_jn} ]
                     + d_ij - pos_margin )^2 / 2,
      averaged over positive pairs ((i, j) and (j, i) both count, hence the / 2). An anchor pair with no
      negatives uses 0 for the log-sum-exp (as PML does).
    generalized=True (thesis eq 2.5; Hermans et al.; PML GeneralizedLiftedStructureLoss): per anchor i,
        relu( log sum_{k in P_i} e^{d_ik - pos_margin} + log sum_{k in N_i} e^{neg_margin - d_ik} ),
      averaged over all B anchors (an empty set contributes 0). Eq 2.5 is written with a similarity S:
      with distance="cosine" (d = 1 - S) it is pos_margin = 1 - lambda, neg_margin = 1.
    distance: a distance object (a similarity s enters as PML's margin(): -s with the margins negated) or
      "euclidean" | "sqeuclidean" | "cosine"; default LpDistance() (L2-normalised embeddings, PML's).
    reducer: MeanReducer (default) / SumReducer run fused; others get PML's per-pair / per-anchor losses.
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None).
    With ref_emb the per-pair form follows PML exactly (its negatives of j are the mined pairs whose anchor
    index equals j's index), on a P x N pair matrix; the batch itself runs fused.
    """

    def __init__(self, neg_margin: float = 1.0, pos_margin: float = 0.0, distance=None,
                 generalized: bool = False, *, reducer=None, embedding_regularizer=None,
                 embedding_reg_weight: float = 1.0):
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight)
        self.neg_margin = _pairs.check_real("neg_margin", neg_margin)
        self.pos_margin = _pairs.check_real("pos_margin", pos_margin)
        self.generalized = bool(generalized)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        d = self.matrix(embeddings, ref_emb)
        nm, pm = self.neg_margin, self.pos_margin
        if self.distance.is_inverted:  # PML's margin(): a similarity s acts as the distance -s
            d, nm, pm = -d, -nm, -pm
        kind = self.reduction_kind
        if self.generalized:
            pos_w, neg_w = _pairs.pair_weights(labels, ref_labels, indices_tuple, B, R, ref_emb is None,
                                               d.dtype, d.device)
            if kind in ("mean", "sum"):
                out = _GeneralizedLifted.apply(d, pos_w > 0, neg_w > 0, nm, pm)
                return out * B if kind == "sum" else out
            per = torch.relu(_lse(d - pm, pos_w > 0) + _lse(nm - d, neg_w > 0))
            return self.reduce({"loss": {"losses": per, "indices": torch.arange(B, device=d.device),
                                         "reduction_type": "element"}}, embeddings, labels)
        if ref_emb is None and kind in ("mean", "sum"):
            pos_w, neg_w = _pairs.pair_weights(labels, None, indices_tuple, B, B, True, d.dtype, d.device)
            out = _LiftedPairs.apply(d, pos_w, neg_w, nm, pm)
            return out * pos_w.sum() if kind == "sum" else out
        return self._pair_form(d, nm, pm, embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def _pair_form(self, d, nm, pm, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        """PML's pair-based computation (P positive x N negative pairs)."""
        B, R = d.shape
        if indices_tuple is None:
            pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
            a1, p = torch.where(pos)
            a2, n = torch.where(neg)
        else:
            a1, p, a2, n = _pairs.as_pairs(indices_tuple, B, R, d.device)
        if a1.numel() == 0 or a2.numel() == 0:
            return self.reduce({"loss": {"losses": 0, "indices": None, "reduction_type": "already_reduced"}},
                               embeddings, labels)
        n_per_p = (a2[None, :] == a1[:, None]) | (a2[None, :] == p[:, None])
        neg_lse = _lse((nm - d[a2, n])[None, :].expand(a1.numel(), -1), n_per_p)
        per = torch.relu(neg_lse + d[a1, p] - pm).square() / 2
        return self.reduce({"loss": {"losses": per, "indices": (a1, p), "reduction_type": "pos_pair"}},
                           embeddings, labels)


class GeneralizedLiftedStructureLoss(LiftedStructureLoss):
    """PML's GeneralizedLiftedStructureLoss(neg_margin=1, pos_margin=0, ...): LiftedStructureLoss with
    generalized=True (per-anchor log-sum-exps, "In Defense of the Triplet Loss" p. 4)."""

    def __init__(self, neg_margin: float = 1.0, pos_margin: float = 0.0, *, distance=None, reducer=None,
                 embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        super().__init__(neg_margin, pos_margin, distance, True, reducer=reducer,
                         embedding_regularizer=embedding_regularizer, embedding_reg_weight=embedding_reg_weight)


def _lse(z, mask):
    """log sum_mask e^z per row, 0 for a row without entries (PML's logsumexp without add_one)."""
    z = torch.where(mask, z, -torch.inf)
    has = mask.any(dim=1)
    m = torch.where(has, z.amax(dim=1), 0.0).detach()
    out = torch.exp(z - m[:, None]).sum(dim=1)
    return torch.where(has, torch.log(torch.where(has, out, 1.0)) + m, 0.0)


class _LiftedPairs(torch.autograd.Function):
    """Song et al.'s per-pair lifted loss from the (B, B) distance matrix with an analytic backward.

    L_i = log sum_n w_in e^{m - d_in} (row log-sum-exp over the negatives), L_ij = log(e^L_i + e^L_j)
    (whichever rows have negatives; 0 if neither), u_ij = relu(L_ij + d_ij - pos_margin), loss = sum over
    positive pairs of u^2 / 2, divided by their number P. With Q = pos_w * u / P:
        dloss/dd_ij = Q_ij - p_ij r_i,   p_i. = softmax of row i over its negatives,
        r_i = sum_j Q_ij e^{L_i - L_ij} + sum_k Q_ki e^{L_i - L_ki}   (the pairs that row i's negatives feed).
    Every factor e^{L_i - L_ij} and p is <= 1, so nothing overflows."""

    @staticmethod
    def forward(ctx, d, pos_w, neg_w, neg_margin, pos_margin):
        keep = neg_w > 0
        z = torch.where(keep, (neg_margin - d) + torch.log(torch.where(keep, neg_w, 1.0)), -torch.inf)
        has = keep.any(dim=1)
        m = torch.where(has, z.amax(dim=1), 0.0)
        e = z.sub_(m[:, None]).exp_()
        ssum = e.sum(dim=1)
        lse = torch.where(has, ssum.log() + m, 0.0)
        a, b, ha, hb = lse[:, None], lse[None, :], has[:, None], has[None, :]
        lij = torch.where(ha & hb, torch.logaddexp(a, b), torch.where(ha, a, torch.where(hb, b, 0.0)))
        u = (lij + d).sub_(pos_margin).clamp_min_(0)
        n_pos = pos_w.sum()
        scale = torch.where(n_pos > 0, 1.0 / n_pos.clamp_min(1), 0.0)
        loss = (u * u).mul_(pos_w).sum() * 0.5 * scale
        q = u.mul_(pos_w)
        r = (q * torch.where(ha, (a - lij).exp_(), 0.0)).sum(dim=1) + \
            (q * torch.where(hb, (b - lij).exp_(), 0.0)).sum(dim=0)
        p = e.div_(torch.where(has, ssum, 1.0)[:, None])
        ctx.save_for_backward(q, p, r, scale)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        q, p, r, scale = ctx.saved_tensors
        return (q - p * r[:, None]).mul_(g * scale), None, None, None, None


class _GeneralizedLifted(torch.autograd.Function):
    """mean_i relu( LSE_{k in P_i}(d_ik - pos_margin) + LSE_{k in N_i}(neg_margin - d_ik) ), an empty set
    contributing 0, with the analytic gradient [loss_i > 0] (softmax_P_i(k) - softmax_N_i(k)) / B."""

    @staticmethod
    def forward(ctx, d, pos, neg, neg_margin, pos_margin):
        total, probs = 0, []
        for mask, z in ((pos, d - pos_margin), (neg, neg_margin - d)):
            z = torch.where(mask, z, -torch.inf)
            has = mask.any(dim=1, keepdim=True)
            m = torch.where(has, z.amax(dim=1, keepdim=True), 0.0)
            e = z.sub_(m).exp_()
            ssum = e.sum(dim=1, keepdim=True)
            total = total + torch.where(has, ssum.log() + m, 0.0)
            probs.append(e.div_(torch.where(has, ssum, 1.0)))
        active = (total > 0).to(d.dtype)
        B = d.shape[0]
        ctx.save_for_backward(probs[0].sub_(probs[1]).mul_(active / max(B, 1)))
        return total.clamp_min(0).sum() / max(B, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None, None
