"""SoftTripleLoss (Qian et al. 2019): K centres per class, a soft max over them, and softmax with margin."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import distances as _distances
from .. import _validation as _checks
from . import _pairs
from ._proxies import NORM_EPS, ProxyLoss


class _SoftClassSimilarity(torch.autograd.Function):
    """S_ic = sum_k p_ick s_ick, p_ic. = softmax_k(gamma s_ic.), for s (B, C, K) -> (B, C).

    dS/ds_k = p_k (1 + gamma (s_k - S)). Autograd's graph of softmax, product and sum keeps three
    (B, C, K) tensors and allocates about ten; here the forward allocates one temporary and saves only s
    (the backward recomputes p), the backward allocates two."""

    @staticmethod
    def forward(ctx, s, gamma):
        m = s.amax(dim=2, keepdim=True)
        e = torch.sub(s, m).mul_(gamma).exp_()
        z = e.sum(dim=2)
        S = e.mul_(s).sum(dim=2).div_(z)
        ctx.save_for_backward(s, m, z, S)
        ctx.gamma = gamma
        return S

    @staticmethod
    def backward(ctx, g):
        s, m, z, S = ctx.saved_tensors
        gamma = ctx.gamma
        p = torch.sub(s, m).mul_(gamma).exp_().mul_((g / z)[:, :, None])
        return p.mul_(torch.sub(s, S[:, :, None]).mul_(gamma).add_(1)), None


class SoftTripleLoss(ProxyLoss):
    """-log softmax_y(la (S_i - delta e_y)), S_ic = sum_k softmax_k(s_ick / gamma) s_ick, s_ick the
    similarity of x_i to centre k of class c.

    PML's SoftTripleLoss(num_classes, embedding_size, centers_per_class=10, la=20, gamma=0.1, margin=0.01,
    *, distance=CosineSimilarity(), weight_init_func=kaiming_uniform(a=sqrt(5)), weight_regularizer=None
    (the paper's centre regulariser is PML's SparseCentersRegularizer), weight_reg_weight=1, reducer, ...).
    `fc` (embedding_size, num_classes * centers_per_class) is learnable, class c's centres in columns
    c*K .. c*K + K - 1; self.gamma holds 1 / gamma as in PML. distance must be a similarity (is_inverted).
    Call: loss(embeddings (B, embedding_size), labels (B,), indices_tuple=None).
    """

    weight_attr = "fc"
    weight_layout = "columns"

    def __init__(self, num_classes: int, embedding_size: int, centers_per_class: int = 10, la: float = 20,
                 gamma: float = 0.1, margin: float = 0.01, *, distance=None, reducer=None,
                 weight_regularizer=None, weight_reg_weight: float = 1.0, weight_init_func=None,
                 embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        K = _checks.check_int("centers_per_class", centers_per_class)
        la = _pairs.check_positive("la", la)
        gamma = _pairs.check_positive("gamma", gamma)
        margin = _pairs.check_real("margin", margin)
        if distance is not None and not getattr(distance, "is_inverted", False):
            raise ValueError(f"SoftTripleLoss needs a similarity (is_inverted=True) as distance, "
                             f"got {type(distance).__name__}")
        super().__init__(num_classes, embedding_size, distance, reducer, embedding_regularizer,
                         embedding_reg_weight, weight_regularizer, weight_reg_weight,
                         weight_init_func=weight_init_func, per_class=K)
        self.centers_per_class, self.la, self.gamma, self.margin = K, la, 1.0 / gamma, margin

    @staticmethod
    def default_weight_init(w):
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # PML's (and the official code's) init

    def default_distance(self):
        return _distances.CosineSimilarity()

    def _center_similarities(self, x):
        d, fc = self.distance, self.weight
        if _distances._kind(d) in ("DotProductSimilarity", "CosineSimilarity") and d.p == 2 and d.power == 1:
            rows = x / x.norm(dim=1, keepdim=True).clamp_min(NORM_EPS) if d.normalize_embeddings else x
            cols = fc / fc.norm(dim=0).clamp_min(NORM_EPS) if d.normalize_embeddings else fc
            return rows @ cols
        return self.matrix(x, fc.t())

    def _logits(self, x):
        s = self._center_similarities(x).view(x.shape[0], self.num_classes, self.centers_per_class)
        return _SoftClassSimilarity.apply(s, self.gamma)

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, num_classes): S_ic, the soft class similarities (without la and margin, as PML)."""
        with _pairs.autocast_off(embeddings):
            return self._logits(self._logits_input(embeddings))

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        x, _ = self._check(embeddings, labels, ref_emb)
        S = self._logits(x)
        y = labels[:, None]
        logits = (S * self.la).scatter_add_(1, y, torch.full_like(y, -self.la * self.margin, dtype=S.dtype))
        per_sample = F.cross_entropy(logits, labels, reduction="none")
        if indices_tuple is not None:
            per_sample = per_sample * _pairs.sample_weights(indices_tuple, x.shape[0], x.dtype, x.device)
        return self.reduce_per_sample(per_sample, embeddings, labels)
