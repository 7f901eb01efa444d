"""NPairLoss (Sohn 2016; thesis eq 2.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distances as _distances
from .. import _validation as _checks
from . import _pairs
from .base import MetricLoss

PAIRS = ("one_per_class", "all")


class NPairLoss(MetricLoss):
    """Multi-class N-pair loss log(1 + sum_k e^{S_ik - S_ij}).

    pairs="one_per_class" (Sohn's N-pair batches; PML NPairsLoss): one (anchor, positive) pair per class
      — per class the lowest-index sample that has a positive, with its lowest-index positive (or, with
      indices_tuple, the first mined pair of each anchor label) — and cross entropy of each anchor
      against all N chosen positives, i.e. log(1 + sum_{k != i} e^{S(a_i, p_k) - S(a_i, p_i)}), mean
      over the N pairs.
    pairs="all" (eq 2.4 over every positive pair): for each positive pair (i, j) of the batch,
      log(1 + sum_{k in N_i} e^{S_ik - S_ij}), mean over positive pairs; O(B^2), no per-pair loop.
    distance: a distance object (S = minus the distance when it is not a similarity), or similarity (ours)
      "cosine" (default; PML's default DotProductSimilarity normalises the embeddings) | "dot".
    reducer: MeanReducer (default) runs fused; others get the per-pair losses ("element", one per anchor).
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None); ref_emb is not supported.
    """

    supports_ref_emb = False

    def __init__(self, pairs: str = "one_per_class", similarity: str | None = None, *, distance=None,
                 reducer=None, embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        if similarity is not None:
            _checks.check_choice("similarity", similarity, _pairs.SIMILARITIES)
            if distance is not None:
                raise ValueError("give distance or similarity, not both")
            distance = similarity
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight,
                         distance_strings=_distances.similarity_strings())
        self.pairs = _checks.check_choice("pairs", pairs, PAIRS)

    def default_distance(self):
        return _distances.DotProductSimilarity()

    def _similarity(self, x, y):
        m = self.matrix(x, y)
        return m if self.distance.is_inverted else -m

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        kind = self.reduction_kind
        if self.pairs == "all":
            s = self._similarity(embeddings, None)
            pos_w, neg_w = _pairs.pair_weights(labels, None, indices_tuple, B, B, True, s.dtype, s.device)
            neg_lse = _pairs.masked_logsumexp(s, neg_w, dim=1)
            per_pair = F.softplus(neg_lse[:, None] - s)
            if kind is None or kind == "mean_nonzero":
                a, p = torch.where(pos_w > 0)
                if a.numel() == 0:
                    return _pairs.zero_loss(embeddings)
                return self.reduce({"loss": {"losses": per_pair[a, p], "indices": (a, p),
                                             "reduction_type": "pos_pair"}}, embeddings, labels)
            n_pos = pos_w.sum()
            total = (per_pair * pos_w).sum()
            if kind == "sum":
                return total
            return torch.where(n_pos > 0, total / n_pos.clamp_min(1), total * 0)
        a, p = self._one_pair_per_class(embeddings, labels, indices_tuple)
        if a.numel() == 0:
            return _pairs.zero_loss(embeddings)
        logits = self._similarity(embeddings[a], embeddings[p])
        target = torch.arange(a.numel(), device=a.device)
        if kind == "mean":
            return F.cross_entropy(logits, target)
        return self.reduce({"loss": {"losses": F.cross_entropy(logits, target, reduction="none"), "indices": a,
                                     "reduction_type": "element"}}, embeddings, labels)

    @staticmethod
    def _one_pair_per_class(embeddings, labels, indices_tuple):
        B, device = embeddings.shape[0], embeddings.device
        if indices_tuple is None:
            if labels is None:
                raise ValueError("NPairLoss needs labels")
            pos, _ = _pairs.label_masks(labels, None, True)
            has_pos = pos.any(dim=1)
            first_pos = pos.to(torch.uint8).argmax(dim=1)  # argmax returns the first maximum
            a_all = torch.arange(B, device=device)[has_pos]
            p_all = first_pos[has_pos]
        else:
            a_all, p_all, _, _ = _pairs.as_pairs(indices_tuple, B, B, device)
            if labels is None:
                raise ValueError("NPairLoss needs labels to pick one pair per class")
        if a_all.numel() == 0:
            return a_all, p_all
        _, inv = torch.unique(labels[a_all], return_inverse=True)
        order = torch.arange(a_all.numel(), device=device)
        first = torch.full((int(inv.max()) + 1,), a_all.numel(), device=device, dtype=torch.long)
        first = first.scatter_reduce(0, inv, order, reduce="amin")
        return a_all[first], p_all[first]


class NPairsLoss(NPairLoss):
    """PML's NPairsLoss(*, distance=DotProductSimilarity(), reducer=MeanReducer(), embedding_regularizer=None):
    NPairLoss with pairs="one_per_class"."""

    def __init__(self, *, distance=None, reducer=None, embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        super().__init__("one_per_class", distance=distance, reducer=reducer,
                         embedding_regularizer=embedding_regularizer, embedding_reg_weight=embedding_reg_weight)
