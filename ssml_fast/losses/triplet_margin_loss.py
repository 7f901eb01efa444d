"""TripletMarginLoss: the fused triplet op as an nn.Module with the PML call shape."""
from __future__ import annotations

import torch

from .. import ops
from ..ops import _checks
from . import _pairs
from .base import MetricLoss


class TripletMarginLoss(MetricLoss):
    """max(0, d(a, p) - d(a, n) + margin) over mined triplets, mined and reduced in one fused pass.

    mining: "all" | "hard" | "semihard"; distance: "euclidean" | "sqeuclidean" | "cosine";
    reduction: "mean_nonzero" (PML's AvgNonZeroReducer) | "mean" | "sum"; soft: softplus instead of
    the hinge (hard / semihard). With an `indices_tuple` (a, p, n) from a miner, exactly those triplets
    are used. After each call, `num_active` and `num_triplets` (0-d tensors) hold the counts for logging.
    """

    def __init__(self, margin: float = 0.2, mining: str = "all", distance: str = "euclidean",
                 reduction: str = "mean_nonzero", soft: bool = False):
        super().__init__()
        self.margin = _checks.check_nonnegative("margin", margin)
        self.mining = _checks.check_choice("mining", mining, ops.MININGS)
        self.distance = _checks.check_choice("distance", distance, ops.DISTANCES)
        self.reduction = _checks.check_choice("reduction", reduction, ops.REDUCTIONS)
        if soft and mining == "all":
            raise ValueError("soft=True is supported for mining='hard' and 'semihard', not 'all'")
        self.soft = bool(soft)
        self.num_active = torch.zeros((), dtype=torch.long)
        self.num_triplets = torch.zeros((), dtype=torch.long)

    def empty_loss(self, embeddings, ref_emb):
        device = embeddings.device
        self.num_active = torch.zeros((), dtype=torch.long, device=device)
        self.num_triplets = torch.zeros((), dtype=torch.long, device=device)
        return super().empty_loss(embeddings, ref_emb)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        if indices_tuple is not None:
            return self._given_triplets(embeddings, indices_tuple, ref_emb)
        out = ops.triplet_margin_loss(
            embeddings, labels, self.margin, self.mining, self.distance, self.reduction,
            ref_emb=ref_emb, ref_labels=ref_labels, soft=self.soft, return_stats=True,
        )
        self.num_active, self.num_triplets = out.num_active, out.num_triplets
        return out.loss

    def _given_triplets(self, embeddings, indices_tuple, ref_emb):
        if len(indices_tuple) != 3:
            raise ValueError(f"indices_tuple must be (anchors, positives, negatives), got {len(indices_tuple)} tensors")
        a, p, n = indices_tuple  # validated by MetricLoss.forward: int64, in range
        dist = ops.pairwise_distance(embeddings, ref_emb, self.distance)
        v = dist[a, p] - dist[a, n] + self.margin
        losses = torch.nn.functional.softplus(v) if self.soft else torch.relu(v)
        active = losses > 0
        self.num_active, self.num_triplets = active.sum(), torch.tensor(losses.numel(), device=losses.device)
        if losses.numel() == 0:
            return _pairs.zero_loss(embeddings, ref_emb)
        if self.reduction == "sum":
            return losses.sum()
        if self.reduction == "mean":
            return losses.mean()
        # PML's AvgNonZeroReducer: the sum of all losses over the active count. A NaN loss is not "> 0",
        # but it stays in the sum, so a NaN distance gives a NaN loss instead of silently dropping out.
        n_active = self.num_active
        return torch.where(n_active > 0, losses.sum() / n_active.clamp_min(1), losses.sum() * 0)
