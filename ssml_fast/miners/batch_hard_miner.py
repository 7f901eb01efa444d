"""BatchHardMiner (Hermans et al. 2017): per anchor the farthest positive and the nearest negative."""
from __future__ import annotations

import torch

from ..losses import _pairs
from .base import BaseMiner


class BatchHardMiner(BaseMiner):
    """Triplets (a, p, n): for every anchor with at least one positive and one negative, p = the farthest
    of its positives and n = the nearest of its negatives (for a similarity: the least / most similar;
    ties -> lowest index, like torch.max / torch.min, which is also what PML's BatchHardMiner returns).
    distance: a distance object (default LpDistance(), PML's) or "euclidean" | "sqeuclidean" | "cosine".
    O(B * R) memory."""

    def __init__(self, distance=None):
        super().__init__(distance)

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        d = self.distance_matrix(embeddings, ref_emb)
        pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
        keep = pos.any(dim=1) & neg.any(dim=1)
        p = d.masked_fill(~pos, -torch.inf).max(dim=1).indices
        n = d.masked_fill(~neg, torch.inf).min(dim=1).indices
        a = torch.arange(d.shape[0], device=d.device)
        return a[keep], p[keep], n[keep]
