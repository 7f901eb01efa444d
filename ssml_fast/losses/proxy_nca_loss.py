"""ProxyNCALoss (Movshovitz-Attias et al. 2017; thesis eq 2.6)."""
from __future__ import annotations

import torch

from .. import distances as _distances
from . import _pairs
from ._proxies import ProxyLoss

_DISTANCE_STRINGS = {"sqeuclidean": lambda: _distances.LpDistance(power=2), "cosine": _distances.CosineSimilarity}


class ProxyNCALoss(ProxyLoss):
    """-log softmax over proxies: one learnable proxy per class (`proxies`, (num_classes, embedding_size)).

    PML's ProxyNCALoss(num_classes, embedding_size, softmax_scale=1, *, distance=LpDistance(power=2),
    reducer=MeanReducer(), weight_regularizer=None, ...).
    logits_ic = -softmax_scale * d(x_i, p_c), d = squared euclidean between L2-normalised embeddings and
    proxies (PML's default LpDistance(power=2)); for a similarity s (is_inverted) +softmax_scale * s.
    distance: a distance object, or "sqeuclidean" (the default) | "cosine" (CosineSimilarity).
    exclude_positive=False (PML ProxyNCALoss): -log( e^{l_iy} / sum_c e^{l_ic} ).
    exclude_positive=True  (eq 2.6, the original paper): -log( e^{l_iy} / sum_{c != y} e^{l_ic} ).
    With an indices_tuple each sample's loss is weighted by how often it occurs as an anchor, count / max
    count (PML's convert_to_weights with a reference set: only anchors index the embeddings); the mean
    runs over the samples whose softmax probability is not 0 (PML drops those, whose loss is inf).
    Proxies are initialised N(0, 1) (PML's default, ProxyLoss.default_weight_init). Labels must be class ids in [0, num_classes).
    Call: loss(embeddings (B, embedding_size), labels (B,), indices_tuple=None).
    """

    def __init__(self, num_classes: int, embedding_size: int, softmax_scale: float = 1.0, distance=None,
                 exclude_positive: bool = False, *, reducer=None, weight_regularizer=None,
                 weight_reg_weight: float = 1.0, embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        super().__init__(num_classes, embedding_size, distance, reducer, embedding_regularizer,
                         embedding_reg_weight, weight_regularizer, weight_reg_weight,
                         distance_strings=_DISTANCE_STRINGS)
        self.softmax_scale = _pairs.check_positive("softmax_scale", softmax_scale)
        self.exclude_positive = bool(exclude_positive)

    def default_distance(self):
        return _distances.LpDistance(power=2)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        x, proxies = self._check(embeddings, labels, ref_emb)
        d = self.matrix(x, proxies)
        logits = (self.softmax_scale if self.distance.is_inverted else -self.softmax_scale) * d
        own = logits.gather(1, labels[:, None]).squeeze(1)
        if self.exclude_positive:
            if self.num_classes == 1:
                return _pairs.zero_loss(embeddings, self.proxies)
            others = logits.scatter(1, labels[:, None], float("-inf"))
            per_sample = torch.logsumexp(others, dim=1) - own
        else:
            per_sample = torch.logsumexp(logits, dim=1) - own
        # anchors only: the positives / negatives of a miner's tuple index the batch, not the proxies
        w = _pairs.sample_weights(indices_tuple, x.shape[0], x.dtype, x.device, R=x.shape[0])
        per_sample = per_sample * w
        keep = per_sample != torch.inf  # PML: a sample whose probability underflows to 0 is dropped
        kind = self.reduction_kind
        if kind == "mean":
            n = keep.sum()
            total = torch.where(keep, per_sample, 0.0).sum()
            out = torch.where(n > 0, total / n.clamp_min(1), _pairs.zero_loss(embeddings, self.proxies))
        else:
            idx = torch.where(keep)[0]
            out = self.reduce({"loss": {"losses": per_sample[idx], "indices": idx, "reduction_type": "element"}},
                              embeddings, labels)
        reg = self._weight_reg(self.proxies)
        return out if reg is None else out + reg
