"""NormalizedSoftmaxLoss (Zhai & Wu 2019, "Classification is a strong baseline for deep metric learning")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distances as _distances
from . import _pairs
from ._proxies import NORM_EPS, ProxyLoss


class NormalizedSoftmaxLoss(ProxyLoss):
    """-log softmax_y(l_i), l_ij = s(x_i, W_j / |W_j|) / temperature for a similarity s (is_inverted),
    -d(x_i, W_j / |W_j|) / temperature for a distance d.

    PML's NormalizedSoftmaxLoss(num_classes, embedding_size, temperature=0.05, *,
    distance=DotProductSimilarity(), weight_init_func=normal, weight_regularizer=None, weight_reg_weight=1,
    reducer=MeanReducer(), embedding_regularizer=None, ...). PML's default DotProductSimilarity normalises
    the embeddings, so the default logits are cosines / temperature. `W` (embedding_size, num_classes) is
    learnable; W's columns are normalised with the distance's p in the loss. temperature > 0.
    Call: loss(embeddings (B, embedding_size), labels (B,), indices_tuple=None).
    """

    weight_attr = "W"
    weight_layout = "columns"

    def __init__(self, num_classes: int, embedding_size: int, temperature: float = 0.05, *, distance=None,
                 reducer=None, weight_regularizer=None, weight_reg_weight: float = 1.0, weight_init_func=None,
                 embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        temperature = _pairs.check_positive("temperature", temperature)
        super().__init__(num_classes, embedding_size, distance, reducer, embedding_regularizer,
                         embedding_reg_weight, weight_regularizer, weight_reg_weight,
                         weight_init_func=weight_init_func)
        self.temperature = temperature

    def default_distance(self):
        return _distances.DotProductSimilarity()

    def _logits(self, x):
        d = self.distance
        W = self.weight
        fast = _distances._kind(d) in ("DotProductSimilarity", "CosineSimilarity") and d.p == 2 and d.power == 1
        if fast:
            # one GEMM: (x / |x| or x) @ (W / |W|) / temperature, the scales folded into the B x D / D x C
            # operands instead of a pass over the B x C matrix
            rows = x / x.norm(dim=1, keepdim=True).clamp_min(NORM_EPS) if d.normalize_embeddings else x
            return (rows / self.temperature) @ (W / W.norm(dim=0).clamp_min(NORM_EPS))
        w_rows = d.normalize(W, dim=0).t()
        logits = self.matrix(x, w_rows) / self.temperature
        return logits if d.is_inverted else -logits

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, num_classes): l_ij above (no margin; the loss's logits)."""
        with _pairs.autocast_off(embeddings):
            return self._logits(self._logits_input(embeddings))

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        x, _ = self._check(embeddings, labels, ref_emb)
        per_sample = F.cross_entropy(self._logits(x), labels, reduction="none")
        if indices_tuple is not None:
            per_sample = per_sample * _pairs.sample_weights(indices_tuple, x.shape[0], x.dtype, x.device)
        return self.reduce_per_sample(per_sample, embeddings, labels)
