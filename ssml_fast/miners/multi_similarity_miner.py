"""MultiSimilarityMiner (Wang et al. 2019): informative pairs by relative similarity."""
from __future__ import annotations

import torch

from .. import distances as _distances
from ..losses import _pairs
from .. import _validation as _checks
from .base import BaseMiner


class MultiSimilarityMiner(BaseMiner):
    """Pairs (a1, p, a2, n) on the similarity s: a positive (a, p) is kept when s_ap - epsilon <
    max over a's negatives of s_an; a negative (a, n) when s_an + epsilon > min over a's positives of
    s_ap. Same pairs as PML's MultiSimilarityMiner (PML orders them by similarity within each anchor,
    we by index). distance: a distance object (default CosineSimilarity(), PML's; for a distance d the
    rules mirror: d_ap + epsilon > min negative d, d_an - epsilon < max positive d), or similarity (ours)
    "cosine" | "dot". O(B * R) memory.
    A NaN similarity (a NaN embedding) is mined, not skipped: the pair is kept when its own similarity or the
    anchor's max negative / min positive is NaN, so the NaN reaches the loss."""

    tuple_size = 4

    def __init__(self, epsilon: float = 0.1, similarity: str | None = None, *, distance=None):
        if similarity is not None:
            _checks.check_choice("similarity", similarity, _pairs.SIMILARITIES)
            if distance is not None:
                raise ValueError("give distance or similarity, not both")
            distance = similarity
        super().__init__(distance, distance_strings=_distances.similarity_strings())
        self.epsilon = _pairs.check_real("epsilon", epsilon)

    def default_distance(self):
        return _distances.CosineSimilarity()

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        # a distance is mined as the similarity -d: the same rules with the comparisons mirrored
        s = self.matrix(embeddings, ref_emb)
        if not self.distance.is_inverted:
            s = -s
        pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
        max_neg = s.masked_fill(~neg, -torch.inf).amax(dim=1, keepdim=True)
        min_pos = s.masked_fill(~pos, torch.inf).amin(dim=1, keepdim=True)
        a1, p = torch.where(pos & ((s - self.epsilon < max_neg) | s.isnan() | max_neg.isnan()))
        a2, n = torch.where(neg & ((s + self.epsilon > min_pos) | s.isnan() | min_pos.isnan()))
        return a1, p, a2, n
