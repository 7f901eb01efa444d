"""ProxyAnchorLoss (Kim et al. 2020): proxies as anchors, learnable proxies, `num_classes`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _pairs
from ._proxies import ProxyLoss


class ProxyAnchorLoss(ProxyLoss):
    """1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} e^{-alpha (s(x, p) - margin)})
       + 1/C sum_{p} log(1 + sum_{x in X_p-} e^{alpha (s(x, p) + margin)}),
    s = cosine similarity, P+ the proxies with at least one sample of their class in the batch, C =
    num_classes. `proxies` (num_classes, embedding_size) is learnable, Kaiming-normal (fan_out)
    initialised as in PML and the paper. With indices_tuple, each sample's exponent gets PML's miner
    weight (count / max count) - 1 added. Labels must be class ids in [0, num_classes).
    Call: loss(embeddings (B, embedding_size), labels (B,), indices_tuple=None).
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.1, alpha: float = 32.0):
        super().__init__(num_classes, embedding_size)
        torch.nn.init.kaiming_normal_(self.proxies, mode="fan_out")
        self.margin = _pairs.check_real("margin", margin)
        self.alpha = _pairs.check_positive("alpha", alpha)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        x, proxies = self._check(embeddings, labels, ref_emb)
        s = _pairs.similarity(x, proxies, "cosine")  # (B, C)
        w = _pairs.sample_weights(indices_tuple, x.shape[0], s.dtype, s.device)[:, None] - 1
        pos_mask = F.one_hot(labels, self.num_classes).to(s.dtype)
        neg_mask = 1 - pos_mask
        pos = F.softplus(_pairs.masked_logsumexp((-self.alpha * (s - self.margin) + w).T, pos_mask.T, dim=1))
        neg = F.softplus(_pairs.masked_logsumexp((self.alpha * (s + self.margin) + w).T, neg_mask.T, dim=1))
        n_with_pos = (pos_mask.sum(0) > 0).sum().clamp_min(1)
        return pos.sum() / n_with_pos + neg.sum() / self.num_classes
