"""SemiHardMiner: triplets whose negative is farther than the positive but inside the margin."""
from __future__ import annotations

import torch

from ..losses import _pairs
from .. import _validation as _checks
from .base import BaseMiner, empty_tuple

MODES = ("all", "nearest")


class SemiHardMiner(BaseMiner):
    """Triplets (a, p, n) with d(a, p) < d(a, n) <= d(a, p) + margin.

    mode="all" (PML TripletMarginMiner(type_of_triplets="semihard")): every such triplet, ordered by
      (a, p, n). The output itself can be O(B * R^2); the work is done per positive pair against one row
      (O(#pos pairs * R) memory), never over a B x R x R cube.
    mode="nearest" (FaceNet, Schroff et al. 2015): per positive pair the nearest semi-hard negative, when
      one exists inside the margin; sorted rows + searchsorted, O(B R log R + #pos pairs * R).
    distance: a distance object (default LpDistance(); a similarity s is mined as the distance -s) or
    "euclidean" | "sqeuclidean" | "cosine".
    NaN distances are mined, not skipped (a comparison with NaN is false, which would hide a NaN embedding
    from the loss): mode="all" keeps every triplet whose d(a, p) or d(a, n) is NaN; mode="nearest" gives a
    pair whose d(a, p) is NaN, or whose anchor has a NaN negative distance, that (first) NaN negative, else
    the nearest negative.
    """

    def __init__(self, margin: float = 0.2, distance=None, mode: str = "all"):
        super().__init__(distance)
        self.margin = _checks.check_nonnegative("margin", margin)
        self.mode = _checks.check_choice("mode", mode, MODES)

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        d = self.distance_matrix(embeddings, ref_emb)
        pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
        a, p = torch.where(pos)
        if a.numel() == 0 or not bool(neg.any()):
            return empty_tuple(3, d.device)
        d_ap = d[a, p]
        if self.mode == "all":
            rows = d[a]  # (P, R)
            ok = neg[a] & (((rows > d_ap[:, None]) & (rows <= d_ap[:, None] + self.margin))
                           | rows.isnan() | d_ap.isnan()[:, None])
            k, n = torch.where(ok)
            return a[k], p[k], n
        neg_sorted, neg_idx = d.masked_fill(~neg, torch.inf).sort(dim=1, stable=True)  # ties -> lowest index
        j = torch.searchsorted(neg_sorted[a].contiguous(), d_ap[:, None].contiguous(), right=True).squeeze(1)
        j = j.clamp_max(d.shape[1] - 1)
        d_an = neg_sorted[a, j]
        ok = (d_an > d_ap) & (d_an <= d_ap + self.margin) & ~d_an.isinf()
        n = neg_idx[a, j]
        nan_neg = neg & d.isnan()
        nan_row = nan_neg.any(dim=1)
        nan_pair = (d_ap.isnan() | nan_row[a]) & neg.any(dim=1)[a]
        if bool(nan_pair.any()):
            first_nan = nan_neg.to(torch.uint8).argmax(dim=1)
            n = torch.where(nan_pair, torch.where(nan_row[a], first_nan[a], neg_idx[a, 0]), n)
            ok |= nan_pair
        return a[ok], p[ok], n[ok]
