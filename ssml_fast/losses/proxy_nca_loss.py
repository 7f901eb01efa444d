"""ProxyNCALoss (Movshovitz-Attias et al. 2017; thesis eq 2.6)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import _checks
from . import _pairs
from ._proxies import ProxyLoss


class ProxyNCALoss(ProxyLoss):
    """-log softmax over proxies: one learnable proxy per class (`proxies`, (num_classes, embedding_size)).

    logits_ic = -softmax_scale * d(x_i, p_c), d = squared euclidean between L2-normalised embeddings and
    proxies (PML's default LpDistance(power=2)); distance="cosine" uses 1 - cos instead.
    exclude_positive=False (PML ProxyNCALoss): -log( e^{l_iy} / sum_c e^{l_ic} ).
    exclude_positive=True  (eq 2.6, the original paper): -log( e^{l_iy} / sum_{c != y} e^{l_ic} ).
    Mean over samples (weighted by how often they occur in indices_tuple, PML's convert_to_weights).
    Proxies are initialised N(0, 1) (PML's default). Labels must be class ids in [0, num_classes).
    Call: loss(embeddings (B, embedding_size), labels (B,), indices_tuple=None).
    """

    def __init__(self, num_classes: int, embedding_size: int, softmax_scale: float = 1.0,
                 distance: str = "sqeuclidean", exclude_positive: bool = False):
        super().__init__(num_classes, embedding_size)
        torch.nn.init.normal_(self.proxies)
        self.softmax_scale = _pairs.check_positive("softmax_scale", softmax_scale)
        self.distance = _checks.check_choice("distance", distance, ("sqeuclidean", "cosine"))
        self.exclude_positive = bool(exclude_positive)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        x, proxies = self._check(embeddings, labels, ref_emb)
        if self.distance == "sqeuclidean":
            d = _pairs.distance(F.normalize(x, dim=1), F.normalize(proxies, dim=1), "sqeuclidean")
        else:
            d = _pairs.distance(x, proxies, "cosine")
        logits = -self.softmax_scale * d
        own = logits.gather(1, labels[:, None]).squeeze(1)
        if self.exclude_positive:
            if self.num_classes == 1:
                return _pairs.zero_loss(embeddings, self.proxies)
            others = logits.scatter(1, labels[:, None], float("-inf"))
            per_sample = torch.logsumexp(others, dim=1) - own
        else:
            per_sample = torch.logsumexp(logits, dim=1) - own
        w = _pairs.sample_weights(indices_tuple, x.shape[0], x.dtype, x.device)
        return (per_sample * w).mean()
