"""TripletMarginMiner: PML's miner of the triplets that violate (or, "easy", satisfy) the margin."""
from __future__ import annotations

import torch

from ..losses import _pairs
from .. import _validation as _checks
from .base import BaseMiner, empty_tuple

TYPES = ("all", "hard", "semihard", "easy")


class TripletMarginMiner(BaseMiner):
    """Triplets (a, p, n) by their margin m = d(a, n) - d(a, p) (s(a, p) - s(a, n) for a similarity):
    "all": m <= margin; "hard": m <= margin and m <= 0; "semihard": 0 < m <= margin; "easy": m > margin.

    TripletMarginMiner(margin=0.2, type_of_triplets="all", *, distance=LpDistance()) as in PML; any real
    margin. Ordered by (a, p, n) like PML's. Works per positive pair against its reference row
    (O(#positive pairs x R) memory, not PML's B x R x R cube). A NaN margin (a NaN embedding) is mined, not
    skipped, for every type, so the NaN reaches the loss.
    """

    def __init__(self, margin: float = 0.2, type_of_triplets: str = "all", *, distance=None):
        super().__init__(distance)
        self.margin = _pairs.check_real("margin", margin)
        self.type_of_triplets = _checks.check_choice("type_of_triplets", type_of_triplets, TYPES)

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        d = self.distance_matrix(embeddings, ref_emb)
        pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
        a, p = torch.where(pos)
        if a.numel() == 0 or not bool(neg.any()):
            return empty_tuple(3, d.device)
        m = d[a] - d[a, p][:, None]  # (P, R): d(a, n) - d(a, p)
        if self.type_of_triplets == "easy":
            ok = m > self.margin
        else:
            ok = m <= self.margin
            if self.type_of_triplets == "hard":
                ok &= m <= 0
            elif self.type_of_triplets == "semihard":
                ok &= m > 0
        k, n = torch.where(neg[a] & (ok | m.isnan()))
        return a[k], p[k], n
