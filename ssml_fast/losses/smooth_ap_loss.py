"""SmoothAPLoss (Brown et al. 2020; slides 004): 1 - smoothed average precision per query."""
from __future__ import annotations

import torch

from . import _pairs
from .base import MetricLoss


class SmoothAPLoss(MetricLoss):
    """mean over queries q with positives of 1 - AP_q, with the rank indicator replaced by a sigmoid:

        AP_q = 1/|P| sum_{i in P} (1 + sum_{j in P, j != i} G(s_qj - s_qi))
                                  / (1 + sum_{j in P u N, j != i} G(s_qj - s_qi)),   G(x) = sigmoid(x / temperature)

    s = cosine similarity; P / N the positives / negatives of q in the reference set (the query itself
    excluded, as on the slides). include_query=True ranks the query among its own positives as well
    (what the original Smooth-AP code and PML's SmoothAPLoss do). Unlike PML, classes need not be
    contiguous or equally sized.
    Cost: the positives of each query are gathered into a (B, K) block (K = largest positive count) and
    compared against all R references: O(B * K * R) time and memory, no loop over queries or pairs.
    With indices_tuple, the pairs come from it instead of the labels: query q ranks against its mined pairs
    only, P = {p : (q, p) mined as positive}, N = {n : (q, n) mined as negative}, each counted once (as the
    mask-based losses do); with ref_emb this is
    how CrossBatchMemory removes the query's own copy from the reference. (PML's SmoothAPLoss ignores
    indices_tuple and supports neither ref_emb nor unequal classes.)
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None).
    """

    def __init__(self, temperature: float = 0.01, include_query: bool = False):
        super().__init__()
        self.temperature = _pairs.check_positive("temperature", temperature)
        self.include_query = bool(include_query)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        if labels is None:
            raise ValueError("SmoothAPLoss needs labels")
        B = embeddings.shape[0]
        s = _pairs.similarity(embeddings, ref_emb, "cosine")  # (B, R)
        R = s.shape[1]
        if indices_tuple is None:
            pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
        else:
            pos_w, neg_w = _pairs.pair_weights(None, None, indices_tuple, B, R, ref_emb is None, s.dtype, s.device)
            pos, neg = pos_w > 0, neg_w > 0
        valid = pos | neg
        if self.include_query and ref_emb is None:
            pos.fill_diagonal_(True)
            valid.fill_diagonal_(True)
        n_pos = pos.sum(dim=1)
        K = int(n_pos.max()) if B else 0
        if K == 0:
            return _pairs.zero_loss(embeddings, ref_emb)
        # (B, K) column index of each query's k-th positive; padded slots point at column 0, masked out.
        order = torch.argsort(pos.to(torch.uint8), dim=1, descending=True, stable=True)[:, :K]
        slot_ok = torch.arange(K, device=s.device)[None, :] < n_pos[:, None]
        s_pos = s.gather(1, order)  # (B, K)
        g = torch.sigmoid((s[:, None, :] - s_pos[:, :, None]) / self.temperature)  # (B, K, R): j vs i
        not_self = torch.ones_like(g, dtype=torch.bool).scatter_(2, order[:, :, None], False)
        g = g * not_self
        rank_all = 1 + (g * valid[:, None, :]).sum(dim=2)
        rank_pos = 1 + (g * pos[:, None, :]).sum(dim=2)
        ap = ((rank_pos / rank_all) * slot_ok).sum(dim=1) / n_pos.clamp_min(1)
        has = n_pos > 0
        per_query = torch.where(has, 1 - ap, 0.0)
        return per_query.sum() / has.sum().clamp_min(1)
