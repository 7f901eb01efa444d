"""NTXentLoss / InfoNCE with PML's multi-positive semantics, in O(B * R) memory."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
import torch.nn.functional as F

from .. import distances as _distances
from .. import _validation as _checks
from . import _pairs
from .base import MetricLoss


class NTXentLoss(MetricLoss):
    """Normalised temperature-scaled cross entropy (SimCLR's NT-Xent, a.k.a. InfoNCE); PML's
    NTXentLoss(temperature=0.07, *, distance=CosineSimilarity(), reducer=MeanReducer()).

    For every positive pair (a, p), with s the similarity / temperature (minus the distance for a distance):
        l(a, p) = -log( exp(s_ap) / (exp(s_ap) + sum_{n in N(a)} exp(s_an)) )
                = softplus( logsumexp_{n in N(a)} s_an - s_ap ),
    i.e. each positive pair competes against all negatives of its anchor and not against the anchor's
    other positives (PML's NTXentLoss semantics); the loss is the mean over positive pairs.
    The negatives' log-sum-exp is computed once per anchor, so time and memory are O(B * R) (PML
    materialises a positives x negatives matrix, O(B * R^2) with several positives per anchor).
    Any reducer other than MeanReducer gets the per-pair losses (reduction_type "pos_pair"), e.g.
    PerAnchorReducer.

    temperature > 0; distance: a distance object, or similarity (ours) "cosine" (default) | "dot".
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None).
    For SimCLR-style training pass the two views stacked with labels = arange(B).repeat(2).
    Pairs mined k times count k times (as in PML). No positive pair -> 0 with zero gradient.
    """

    def __init__(self, temperature: float = 0.07, similarity: str | None = None, *, distance=None, reducer=None,
                 embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        if similarity is not None:
            _checks.check_choice("similarity", similarity, _pairs.SIMILARITIES)
            if distance is not None:
                raise ValueError("give distance or similarity, not both")
            distance = similarity
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight,
                         distance_strings=_distances.similarity_strings())
        self.temperature = _pairs.check_positive("temperature", temperature)

    def default_distance(self):
        return _distances.CosineSimilarity()

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        fm = _distances.fused_metric(self.distance)
        if fm is not None and fm[0] == "cosine" and self.distance.is_inverted:
            # -d / T = (s - 1) / T: the loss is invariant to a constant shift of all logits.
            logits = _pairs.distance(embeddings, ref_emb, "cosine") * (-1.0 / self.temperature)
        else:
            mat = self.matrix(embeddings, ref_emb)
            logits = mat * ((1.0 if self.distance.is_inverted else -1.0) / self.temperature)
        kind = self.reduction_kind
        if indices_tuple is None and kind == "mean":
            pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
            return _NTXentFromLogits.apply(logits, pos, neg)
        if indices_tuple is None:
            pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
            pos_w, neg_w = pos.to(logits.dtype), neg.to(logits.dtype)
        else:
            pos_w, neg_w = _pairs.pair_weights(None, None, indices_tuple, B, R, ref_emb is None,
                                               logits.dtype, logits.device)
        neg_lse = _pairs.masked_logsumexp(logits, neg_w, dim=1)  # (B,), -inf where an anchor has no negative
        per_pair = F.softplus(neg_lse[:, None] - logits)
        if kind == "mean":
            n_pos = pos_w.sum()
            total = (per_pair * pos_w).sum()
            return torch.where(n_pos > 0, total / n_pos.clamp_min(1), total * 0)
        if indices_tuple is None:
            a1, p = torch.where(pos_w > 0)
        else:
            a1, p = _pairs.as_pairs(indices_tuple, B, R, logits.device)[:2]
        if a1.numel() == 0 or not bool((neg_w > 0).any()):  # PML: no loss without a positive and a negative pair
            return self.reduce({"loss": {"losses": 0, "indices": None, "reduction_type": "already_reduced"}},
                               embeddings, labels)
        return self.reduce({"loss": {"losses": per_pair[a1, p], "indices": (a1, p), "reduction_type": "pos_pair"}},
                           embeddings, labels)


class _NTXentFromLogits(torch.autograd.Function):
    """mean over pos (i, j) of softplus(lse_{k in neg_i} z_ik - z_ij), with a hand-written backward:
        dL/dz_ij = -sigmoid(lse_i - z_ij) / P                  for positives,
        dL/dz_ik = softmax_neg_i(k) * sum_{j in pos_i} sigmoid(lse_i - z_ij) / P   for negatives,
    P the number of positive pairs. A handful of B x R passes and no autograd graph over the matrix."""

    @staticmethod
    def forward(ctx, z, pos, neg):
        has_neg = neg.any(dim=1, keepdim=True)
        zn = torch.where(neg, z, -torch.inf)
        m = zn.amax(dim=1, keepdim=True)
        m = torch.where(has_neg, m, torch.zeros_like(m))
        e = zn.sub_(m).exp_()  # softmax numerators over the negatives, 0 elsewhere
        ssum = e.sum(dim=1, keepdim=True)
        lse = torch.where(has_neg, ssum.log() + m, -torch.inf)  # (B, 1)
        t = torch.sub(lse, z)  # lse_i - z_ij
        n_pos = pos.sum()
        loss_sum = torch.where(pos, F.softplus(t), 0.0).sum()
        sig = torch.where(pos, t.sigmoid_(), 0.0)
        ctx.save_for_backward(e, ssum, sig, n_pos)
        return torch.where(n_pos > 0, loss_sum / n_pos.clamp_min(1), loss_sum * 0)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        e, ssum, sig, n_pos = ctx.saved_tensors
        scale = torch.where(n_pos > 0, g / n_pos.clamp_min(1), g * 0)
        row = sig.sum(dim=1, keepdim=True) / ssum.clamp_min(torch.finfo(e.dtype).tiny)
        grad = (e * row).sub_(sig).mul_(scale)  # saved tensors stay intact for retain_graph
        return grad, None, None


InfoNCE = NTXentLoss
