"""BatchHardMiner (Hermans et al. 2017): per anchor the farthest positive and the nearest negative."""
from __future__ import annotations

import torch

from .. import ops
from ..losses import _pairs
from ..ops import _checks
from .base import BaseMiner


class BatchHardMiner(BaseMiner):
    """Triplets (a, p, n): for every anchor with at least one positive and one negative, p = argmax of
    d(a, .) over its positives and n = argmin over its negatives (ties -> lowest index, like torch.max /
    torch.min, which is also what PML's BatchHardMiner returns). distance: "euclidean" | "sqeuclidean" |
    "cosine". O(B * R) memory."""

    def __init__(self, distance: str = "euclidean"):
        super().__init__()
        self.distance = _checks.check_choice("distance", distance, ops.DISTANCES)

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        d = ops.pairwise_distance(embeddings, ref_emb, self.distance)
        pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
        keep = pos.any(dim=1) & neg.any(dim=1)
        p = d.masked_fill(~pos, -torch.inf).max(dim=1).indices
        n = d.masked_fill(~neg, torch.inf).min(dim=1).indices
        a = torch.arange(d.shape[0], device=d.device)
        return a[keep], p[keep], n[keep]
