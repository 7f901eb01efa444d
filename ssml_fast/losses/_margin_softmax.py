"""Shared computation of the margin-softmax family (LargeMarginSoftmax, SphereFace, ArcFace, SubCenterArcFace,
CosFace): cross-entropy over per-class logits whose target entry carries an angular margin.

With x_i the embedding, W_j the class vector (a column of W, PML's (embedding_size, num_classes) layout) and
cos_ij their cosine, every member has the logits
    l_ij = scale * |x_i|^a * |W_j|^b * cos_ij            (j != y_i)
    l_iy = scale * |x_i|^a * |W_y|^b * psi(cos_iy)       (the target, psi = the loss's margin function)
with a = 1 for LargeMarginSoftmax / SphereFace (PML scales by the embedding norm) and 0 for the
ArcFace / CosFace family (normalised embeddings), b = 1 only for LargeMarginSoftmax (unnormalised W).
So the non-target logits are one GEMM, (scale x_i / |x_i|^(1-a)) @ (W_j / |W_j|^(1-b)), and only B target
entries are recomputed: no (B, C) mask, no second (B, C) pass for the scaling (PML builds both).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distances as _distances
from . import _pairs
from ._proxies import NORM_EPS, ProxyLoss


def require_cosine(cls_name: str, distance):
    """The family is defined on cosines: None -> CosineSimilarity(); otherwise ours or PML's
    CosineSimilarity (p = 2, power = 1), as PML asserts."""
    if distance is None:
        return None
    if _distances._kind(distance) != "CosineSimilarity" or distance.p != 2 or distance.power != 1:
        raise ValueError(f"{cls_name}: distance must be CosineSimilarity() (p=2, power=1), "
                         f"got {type(distance).__name__}")
    return distance


class MarginSoftmaxLoss(ProxyLoss):
    weight_attr = "W"
    weight_layout = "columns"
    scale_by_embedding_norm = False  # a above
    scale_by_weight_norm = False     # b above

    def __init__(self, num_classes, embedding_size, margin, scale, *, per_class=1, distance=None, reducer=None,
                 weight_regularizer=None, weight_reg_weight=1.0, weight_init_func=None,
                 embedding_regularizer=None, embedding_reg_weight=1.0):
        # Arguments first, so a bad margin fails before the (num_classes x embedding_size) allocation.
        margin = self.check_margin(margin)
        scale = _pairs.check_positive("scale", scale)
        distance = require_cosine(type(self).__name__, distance)
        super().__init__(num_classes, embedding_size, distance, reducer, embedding_regularizer,
                         embedding_reg_weight, weight_regularizer, weight_reg_weight,
                         weight_init_func=weight_init_func, per_class=per_class)
        self.margin, self.scale = margin, scale
        self.per_class = int(per_class)

    def default_distance(self):
        return _distances.CosineSimilarity()

    # --- the member's margin --------------------------------------------------------------------------
    def check_margin(self, margin):
        return _pairs.check_real("margin", margin)

    def target_psi(self, cos_t: torch.Tensor) -> torch.Tensor:
        """psi(cos theta) of the target entries, (B,) -> (B,)."""
        raise NotImplementedError

    # --- shared computation -------------------------------------------------------------------------
    def _scaled_logits(self, x):
        """(logits without margin (B, C), row norms |x_i| (B,), column norms |W_j| (N,)): the norms build the
        target's factor scale |x_i|^a |W_y|^b. Sub-centres (per_class K > 1): each class's most similar one."""
        W = self.weight
        xn = x.norm(dim=1)
        wn = W.norm(dim=0)
        rows = x * (self.scale / xn.clamp_min(NORM_EPS))[:, None] if not self.scale_by_embedding_norm else x * self.scale
        cols = W / wn.clamp_min(NORM_EPS) if not self.scale_by_weight_norm else W
        logits = rows @ cols
        if self.per_class > 1:
            # max, not amax: its backward scatters into the selected entries (amax's builds a tie mask)
            logits = logits.view(x.shape[0], self.num_classes, self.per_class).max(dim=2).values
        return logits, xn, wn

    def _target_factor(self, labels, xn, wn):
        f = torch.full_like(xn, self.scale)
        if self.scale_by_embedding_norm:
            f = f * xn
        if self.scale_by_weight_norm:
            f = f * wn[labels]
        return f

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) logits without margin, PML's get_logits: scale * cos (ArcFace / CosFace, the
        best sub-centre for SubCenterArcFace), scale * |x| * cos (SphereFace), scale * x . W_j
        (LargeMarginSoftmax)."""
        with _pairs.autocast_off(embeddings):
            x = self._logits_input(embeddings)
            # PML's order of operations (cosines, then the scale factors): values agree to the last bit
            # with code that recomputes them the PML way; the loss folds the factors into the GEMM instead
            W = self.weight
            logits = F.normalize(x, dim=1) @ F.normalize(W, dim=0)
            if self.per_class > 1:
                logits = logits.view(x.shape[0], self.num_classes, self.per_class).max(dim=2).values
            if self.scale_by_weight_norm:
                logits = logits * W.norm(dim=0)[None, :]
            if self.scale_by_embedding_norm:
                logits = logits * x.norm(dim=1)[:, None]
            return logits * self.scale

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        x, _ = self._check(embeddings, labels, ref_emb)
        logits, xn, wn = self._scaled_logits(x)
        y = labels[:, None]
        factor = self._target_factor(labels, xn, wn)
        # factor is 0 only for a zero embedding (LargeMargin / SphereFace), whose target logit is then 0 too
        cos_t = logits.gather(1, y).squeeze(1) / factor.clamp_min(torch.finfo(x.dtype).tiny)
        logits = logits.scatter(1, y, (factor * self.target_psi(cos_t))[:, None])  # gather saved the input
        per_sample = F.cross_entropy(logits, labels, reduction="none")
        if indices_tuple is not None:
            per_sample = per_sample * _pairs.sample_weights(indices_tuple, x.shape[0], x.dtype, x.device)
        return self.reduce_per_sample(per_sample, embeddings, labels)
