"""HistogramLoss (Ustinova & Lempitsky 2016; slides 004)."""
from __future__ import annotations

import numpy as np
import torch

from .. import distances as _distances
from . import _pairs
from .base import MetricLoss


class HistogramConfigError(ValueError, AssertionError):
    """Inconsistent n_bins / delta: a ValueError (our rule) that is also the AssertionError PML raises."""


class HistogramLoss(MetricLoss):
    """Probability that a random negative pair is more similar than a random positive pair:

        L = sum_r h-_r * sum_{q <= r} h+_q,

    h+ / h- the soft histograms (linear interpolation onto n_bins + 1 nodes evenly spaced on [-1, 1]) of
    the similarities (`distance`, default CosineSimilarity) of the unordered positive / negative pairs.
    PML's HistogramLoss(n_bins=None, delta=None): give either (delta = 2 / n_bins; both must agree), or
    neither for 100 bins. As in PML, the pairs are those of
    the batch's triplets: an unordered pair {i, j} counts when i or j is an anchor that has both a
    positive and a negative (with labels), or the unique unordered (a, p) / (a, n) pairs of indices_tuple.
    No positive or no negative pair -> 0 with zero gradient.
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None); ref_emb is not supported.
    """

    supports_ref_emb = False

    def __init__(self, n_bins: int | None = None, delta: float | None = None, *, distance=None, reducer=None,
                 embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight)
        if n_bins is not None:
            if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
                raise TypeError(f"n_bins must be an int, got {type(n_bins).__name__}")
            if n_bins < 1:
                raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        if delta is not None:
            delta = _pairs.check_positive("delta", delta)
            if n_bins is not None and delta != 2 / n_bins:
                raise HistogramConfigError(f"delta and n_bins must satisfy delta = 2 / n_bins, got delta={delta} "
                                           f"and n_bins={n_bins}")
            n = round(2 / delta)
            if abs(n * delta - 2) > 1e-9:
                raise ValueError(f"delta must divide 2 into a whole number of bins, got {delta}")
            n_bins = n
        self.n_bins = 100 if n_bins is None else int(n_bins)
        self.delta = 2.0 / self.n_bins if delta is None else delta

    def default_distance(self):
        return _distances.CosineSimilarity()

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        s = self.matrix(embeddings, None)
        if indices_tuple is None:
            pos, neg = _pairs.label_masks(labels, None, True)
            anchor = (pos.any(dim=1) & neg.any(dim=1))[:, None]
            pos, neg = pos & anchor, neg & anchor
        else:
            a, p, n = _pairs.as_triplets(indices_tuple, B, B, s.device)  # PML: the pairs of the triplets
            pos = _pairs.pair_counts(a, p, B, B, s.dtype, s.device) > 0
            neg = _pairs.pair_counts(a, n, B, B, s.dtype, s.device) > 0
        upper = torch.ones(B, B, dtype=torch.bool, device=s.device).triu(1)
        pos = (pos | pos.T) & upper
        neg = (neg | neg.T) & upper
        if not bool(pos.any()) or not bool(neg.any()):
            return _pairs.zero_loss(embeddings)
        h_pos = self._density(s[pos])
        h_neg = self._density(s[neg])
        return (h_neg * torch.cumsum(h_pos, dim=0)).sum()

    def _density(self, sims):
        """Soft histogram of sims in [-1, 1] onto n_bins + 1 nodes, normalised to sum 1."""
        r = torch.floor((sims.detach() + 1) / self.delta).long().clamp(0, self.n_bins - 1)
        rf = r.to(sims.dtype)  # long * float would round the node positions to float32
        above = (sims + 1 - rf * self.delta) / self.delta  # weight of node r + 1
        below = ((rf + 1) * self.delta - 1 - sims) / self.delta  # weight of node r
        h = sims.new_zeros(self.n_bins + 1)
        h = h.index_add(0, r + 1, above).index_add(0, r, below)
        return h / sims.numel()
