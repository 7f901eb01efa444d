"""ProxyAnchorLoss (Kim et al. 2020): proxies as anchors, learnable proxies, `num_classes`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distances as _distances
from .. import reducers as _reducers
from . import _pairs
from ._proxies import ProxyLoss


class ProxyAnchorLoss(ProxyLoss):
    """1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} e^{-alpha (s(x, p) - margin)})
       + 1/C sum_{p} log(1 + sum_{x in X_p-} e^{alpha (s(x, p) + margin)}),
    s = cosine similarity, P+ the proxies with at least one sample of their class in the batch, C =
    num_classes. PML's ProxyAnchorLoss(num_classes, embedding_size, margin=0.1, alpha=32, *,
    distance=CosineSimilarity(), reducer=DivisorReducer(), weight_regularizer=None, ...); with a distance
    (not is_inverted) the exponents are PML's margin() forms (d - margin, -margin - d).
    `proxies` (num_classes, embedding_size) is learnable, Kaiming-normal (fan_out) initialised as in PML
    and the paper. With indices_tuple, each sample's exponent gets PML's miner weight (count / max count)
    - 1 added. Labels must be class ids in [0, num_classes).
    Call: loss(embeddings (B, embedding_size), labels (B,), indices_tuple=None).
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.1, alpha: float = 32.0, *,
                 distance=None, reducer=None, weight_regularizer=None, weight_reg_weight: float = 1.0,
                 embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        super().__init__(num_classes, embedding_size, distance, reducer, embedding_regularizer,
                         embedding_reg_weight, weight_regularizer, weight_reg_weight)
        self.margin = _pairs.check_real("margin", margin)
        self.alpha = _pairs.check_positive("alpha", alpha)

    @staticmethod
    def default_weight_init(w):
        torch.nn.init.kaiming_normal_(w, mode="fan_out")  # PML's default weight_init_func here

    def default_distance(self):
        return _distances.CosineSimilarity()

    def default_reducer(self):
        return _reducers.DivisorReducer()

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        x, proxies = self._check(embeddings, labels, ref_emb)
        s = self.matrix(x, proxies)  # (B, C)
        w = _pairs.sample_weights(indices_tuple, x.shape[0], s.dtype, s.device)[:, None] - 1
        pos_exp = self.distance.margin(s, self.margin)   # margin - s for a similarity
        neg_exp = self.distance.margin(-self.margin, s)  # s + margin
        pos_mask = F.one_hot(labels, self.num_classes).to(s.dtype)
        neg_mask = 1 - pos_mask
        pos = F.softplus(_pairs.masked_logsumexp((self.alpha * pos_exp + w).T, pos_mask.T, dim=1))
        neg = F.softplus(_pairs.masked_logsumexp((self.alpha * neg_exp + w).T, neg_mask.T, dim=1))
        n_with_pos = int((pos_mask.sum(0) > 0).sum())
        if type(self.reducer).__name__ == "DivisorReducer" and type(self.reducer).__module__ in (
                _reducers.__name__, "pytorch_metric_learning.reducers.divisor_reducer"):
            out = pos.sum() / max(n_with_pos, 1) + neg.sum() / self.num_classes
        else:
            idx = torch.arange(self.num_classes, device=s.device)
            out = self.reduce({
                "pos_loss": {"losses": pos, "indices": idx, "reduction_type": "element", "divisor": n_with_pos},
                "neg_loss": {"losses": neg, "indices": idx, "reduction_type": "element",
                             "divisor": self.num_classes}}, embeddings, labels)
        reg = self._weight_reg(self.proxies)
        return out if reg is None else out + reg
