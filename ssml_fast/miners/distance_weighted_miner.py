"""DistanceWeightedMiner (Wu et al. 2017): negatives sampled with weight 1 / q(d) on the unit sphere."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..losses import _pairs
from .base import BaseMiner, empty_tuple


class DistanceWeightedMiner(BaseMiner):
    """Triplets (a, p, n): every positive pair (a, p) with one negative n drawn from
        w_an ~ 1 / q(max(d_an, cutoff)) * [d_an < nonzero_loss_cutoff],
        log q(d) = (D - 2) log d + (D - 3)/2 log(1 - d^2 / 4),
    d the euclidean distance between L2-normalised embeddings (the density of pairwise distances of
    uniform points on the D-dimensional sphere). Anchors whose weights are all zero are skipped.
    Randomness comes from torch's global generator (pass `generator` for reproducibility).
    The negative distribution per anchor is PML's DistanceWeightedMiner's (PML draws n_p random
    positives per anchor instead of enumerating them). O(B * R) memory.
    NaN distances are mined, not skipped: an anchor with NaN negative distances draws uniformly among those
    negatives, so the NaN reaches the loss (a NaN distance has no density weight).
    """

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                 generator: torch.Generator | None = None):
        super().__init__()
        # any real cutoffs, as PML (a cutoff <= 0 keeps no negative: an empty tuple)
        self.cutoff = _pairs.check_real("cutoff", cutoff)
        self.nonzero_loss_cutoff = _pairs.check_real("nonzero_loss_cutoff", nonzero_loss_cutoff)
        self.generator = generator

    def weights(self, embeddings, labels, ref_emb=None, ref_labels=None) -> torch.Tensor:
        """(B, R) row-normalised sampling probabilities of the negatives (rows may be all zero)."""
        dim = embeddings.shape[1]
        x = F.normalize(embeddings, dim=1)
        y = None if ref_emb is None else F.normalize(ref_emb, dim=1)
        d = ops.pairwise_distance(x, y, "euclidean")
        dc = d.clamp_min(self.cutoff)
        log_w = (2.0 - dim) * torch.log(dc) - ((dim - 3) / 2) * torch.log(1.0 - 0.25 * dc.square())
        _, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
        ok = neg & (d < self.nonzero_loss_cutoff) & torch.isfinite(log_w)
        log_w = log_w.masked_fill(~ok, -torch.inf)
        m = log_w.amax(dim=1, keepdim=True)
        w = torch.exp(log_w - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
        nan_neg = neg & d.isnan()
        w = torch.where(nan_neg.any(dim=1, keepdim=True), nan_neg.to(w.dtype), w)
        return w / w.sum(dim=1, keepdim=True).clamp_min(1e-30)

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        w = self.weights(embeddings, labels, ref_emb, ref_labels)
        pos, _ = _pairs.label_masks(labels, ref_labels, ref_emb is None)
        pos &= (w.sum(dim=1) > 0)[:, None]
        a, p = torch.where(pos)
        if a.numel() == 0:
            return empty_tuple(3, embeddings.device)
        # One multinomial call per anchor row with as many draws as its largest positive count, then
        # the k-th positive of anchor a takes draw k: O(B * K) samples, no per-pair copy of the rows.
        counts = pos.sum(dim=1)
        K = int(counts.max())
        rows = torch.where(counts > 0)[0]
        draws = torch.multinomial(w[rows].float(), K, replacement=True, generator=self.generator)
        full = torch.zeros(w.shape[0], K, dtype=torch.long, device=w.device)
        full[rows] = draws
        k = torch.arange(a.numel(), device=a.device) - torch.searchsorted(a, a, right=False)
        return a, p, full[a, k]
