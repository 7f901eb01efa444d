"""NTXentLoss / InfoNCE with PML's multi-positive semantics, in O(B * R) memory."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import _checks
from . import _pairs
from .base import MetricLoss


class NTXentLoss(MetricLoss):
    """Normalised temperature-scaled cross entropy (SimCLR's NT-Xent, a.k.a. InfoNCE).

    For every positive pair (a, p), with s the similarity / temperature:
        l(a, p) = -log( exp(s_ap) / (exp(s_ap) + sum_{n in N(a)} exp(s_an)) )
                = softplus( logsumexp_{n in N(a)} s_an - s_ap ),
    i.e. each positive pair competes against all negatives of its anchor and not against the anchor's
    other positives (PML's NTXentLoss semantics); the loss is the mean over positive pairs.
    The negatives' log-sum-exp is computed once per anchor, so time and memory are O(B * R) (PML
    materialises a positives x negatives matrix, O(B * R^2) with several positives per anchor).

    temperature > 0; similarity: "cosine" (default, PML's CosineSimilarity) or "dot".
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None).
    For SimCLR-style training pass the two views stacked with labels = arange(B).repeat(2).
    Pairs mined k times count k times (as in PML). No positive pair -> 0 with zero gradient.
    """

    def __init__(self, temperature: float = 0.07, similarity: str = "cosine"):
        super().__init__()
        self.temperature = _pairs.check_positive("temperature", temperature)
        self.similarity = _checks.check_choice("similarity", similarity, _pairs.SIMILARITIES)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        s = _pairs.similarity(embeddings, ref_emb, self.similarity) / self.temperature
        pos_w, neg_w = _pairs.pair_weights(labels, ref_labels, indices_tuple, B, R, ref_emb is None,
                                           s.dtype, s.device)
        neg_lse = _pairs.masked_logsumexp(s, neg_w, dim=1)  # (B,), -inf where an anchor has no negative
        per_pair = F.softplus(neg_lse[:, None] - s)
        n_pos = pos_w.sum()
        total = (per_pair * pos_w).sum()
        return torch.where(n_pos > 0, total / n_pos.clamp_min(1), total * 0)


InfoNCE = NTXentLoss
