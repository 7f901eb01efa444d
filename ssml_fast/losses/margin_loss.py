"""MarginLoss (Wu et al. 2017, "Sampling Matters") with a learnable boundary beta, PML's semantics."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distances as _distances
from .. import reducers as _reducers
from .. import _validation as _checks
from . import _pairs
from .base import MetricLoss


class MarginLoss(MetricLoss):
    """Over triplets (a, p, n), d the distance (for a similarity the comparisons flip, PML's margin()):
        l_apn = [d_ap - beta + margin]_+ + [beta - d_an + margin]_+
    reduced as sum / (number of non-zero terms, positive and negative counted separately) (PML's
    DivisorReducer); with learn_beta, nu * beta is added (Wu et al.'s nu (beta - beta_0) term up to its
    constant): nu * beta once for a single beta, sum over triplets of nu * beta[label(a)] / divisor with
    per-class betas.

    PML's MarginLoss(margin=0.2, nu=0, beta=1.2, triplets_per_anchor="all", learn_beta=False,
    num_classes=None, *, distance=LpDistance(), reducer=DivisorReducer(), embedding_regularizer=None, ...).
      beta: the initial boundary; num_classes: one beta per class (indexed by the anchor's label), else one;
      learn_beta: beta is an nn.Parameter (in loss.parameters(): give it to the optimizer, e.g. its own
        learning rate as Wu et al.); the attribute `beta` is a 1-D tensor either way, as in PML;
      triplets_per_anchor: "all", or an int of random triplets per anchor.
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None);
    with an indices_tuple exactly its triplets (pairs become (a1, p, n) with a1 == a2, as PML converts).
    All triplets with DivisorReducer (the default) run in matrix form: the positive term of (a, p) occurs
    once per negative of a and the negative term of (a, n) once per positive of a, so both are weighted
    (B, R) sums, O(B * R) time and memory (PML enumerates the B x R x R triplets). Other configurations
    enumerate the triplets and give PML's loss_dict ("margin_loss" per triplet, "beta_reg_loss").
    """

    def __init__(self, margin: float = 0.2, nu: float = 0, beta: float = 1.2, triplets_per_anchor="all",
                 learn_beta: bool = False, num_classes: int | None = None, *, distance=None, reducer=None,
                 embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight)
        self.margin = _pairs.check_real("margin", margin)
        self.nu = _pairs.check_real("nu", nu)
        if not isinstance(learn_beta, bool):
            raise TypeError(f"learn_beta must be a bool, got {learn_beta!r}")
        if not (triplets_per_anchor == "all" or (isinstance(triplets_per_anchor, int)
                                                  and not isinstance(triplets_per_anchor, bool)
                                                  and triplets_per_anchor >= 1)):
            raise ValueError(f"triplets_per_anchor must be 'all' or a positive int, got {triplets_per_anchor!r}")
        if num_classes is not None:
            _checks.check_int("num_classes", num_classes, low=0)
        self.learn_beta = learn_beta
        self.triplets_per_anchor = triplets_per_anchor
        self.initialize_beta(_pairs.check_real("beta", beta), num_classes)

    def initialize_beta(self, beta, num_classes):
        b = torch.tensor([float(beta)])
        if num_classes:
            b = torch.ones(num_classes) * b
        if self.learn_beta:
            self.beta = nn.Parameter(b)
        else:
            self.register_buffer("beta", b, persistent=False)

    def default_reducer(self):
        return _reducers.DivisorReducer()

    def _betas(self, labels, dtype, device):
        """beta as a scalar tensor (one beta) or per anchor (B,), in the compute dtype (differentiable)."""
        beta = self.beta.to(device=device, dtype=dtype)
        if len(self.beta) == 1:
            return beta[0]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(self.beta)):
            raise ValueError(f"labels must be in [0, num_classes={len(self.beta)}) for per-class betas, got "
                             f"range [{int(labels.min())}, {int(labels.max())}]")
        return beta[labels]

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        if len(self.beta) > 1:
            if labels is None:
                raise ValueError("MarginLoss with per-class betas (num_classes) needs labels")
            self._betas(labels, embeddings.dtype, embeddings.device)  # label range checked before any work
        if indices_tuple is None and self.triplets_per_anchor == "all" and _is_divisor(self.reducer):
            return self._matrix_form(embeddings, labels, ref_emb, ref_labels)
        device = embeddings.device
        a, p, n = _pairs.select_triplets(labels, ref_labels, ref_emb is None, indices_tuple,
                                         self.triplets_per_anchor, B, R, device)
        if a.numel() == 0:
            return self.reduce(self._zero_dict(), embeddings, labels)
        mat = self.matrix(embeddings, ref_emb)
        beta = self._betas(labels[a] if len(self.beta) > 1 else labels, mat.dtype, device)
        pos_loss = F.relu(self.distance.margin(mat[a, p], beta) + self.margin)
        neg_loss = F.relu(self.distance.margin(beta, mat[a, n]) + self.margin)
        divisor = torch.sum(pos_loss > 0) + torch.sum(neg_loss > 0)
        out = {"margin_loss": {"losses": pos_loss + neg_loss, "indices": (a, p, n), "reduction_type": "triplet",
                               "divisor": divisor}}
        out["beta_reg_loss"] = self._reg_entry(beta, a, divisor)
        return self.reduce(out, embeddings, labels)

    def _reg_entry(self, beta, anchor_idx, divisor):
        if not self.learn_beta:
            return {"losses": 0, "indices": None, "reduction_type": "already_reduced"}
        if len(self.beta) == 1:
            return {"losses": beta * self.nu, "indices": None, "reduction_type": "already_reduced"}
        return {"losses": beta * self.nu, "indices": anchor_idx, "reduction_type": "element", "divisor": divisor}

    def _zero_dict(self):
        return {k: {"losses": 0, "indices": None, "reduction_type": "already_reduced"}
                for k in ("margin_loss", "beta_reg_loss")}

    def _matrix_form(self, embeddings, labels, ref_emb, ref_labels):
        pos, neg = _pairs.label_masks(labels, ref_labels, ref_emb is None)
        n_pos = torch.count_nonzero(pos, dim=1)
        n_neg = torch.count_nonzero(neg, dim=1)
        per_anchor = n_pos * n_neg  # triplets per anchor
        if not bool(per_anchor.any()):
            return self.reduce(self._zero_dict(), embeddings, labels)
        mat = self.matrix(embeddings, ref_emb)
        dtype, device = mat.dtype, mat.device
        beta = self._betas(labels, dtype, device)
        b = beta[:, None] if beta.dim() else beta
        sign = -1.0 if self.distance.is_inverted else 1.0
        # the pair terms; a triplet (a, p, n) is [v+_ap]_+ + [v-_an]_+
        hp = torch.where(pos, F.relu(sign * (mat - b) + self.margin), 0.0)
        hn = torch.where(neg, F.relu(sign * (b - mat) + self.margin), 0.0)
        wp = n_neg.to(dtype)[:, None]  # occurrences of each (a, p) term
        wn = n_pos.to(dtype)[:, None]
        total = (hp * wp).sum() + (hn * wn).sum()
        divisor = ((hp > 0) * wp).sum() + ((hn > 0) * wn).sum()
        loss = torch.where(divisor > 0, total / divisor.clamp_min(1), _pairs.zero_loss(mat, *self.parameters()))
        if self.learn_beta:
            if beta.dim() == 0:
                loss = loss + beta * self.nu
            else:
                reg = (beta * per_anchor.to(dtype)).sum() * self.nu
                loss = loss + torch.where(divisor > 0, reg / divisor.clamp_min(1), reg * 0)
        return loss


def _is_divisor(reducer) -> bool:
    t = type(reducer)
    return t.__name__ == "DivisorReducer" and (t.__module__ == _reducers.__name__
                                               or t.__module__.startswith("pytorch_metric_learning.reducers"))
