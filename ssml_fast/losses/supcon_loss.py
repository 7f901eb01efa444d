"""SupConLoss (Khosla et al. 2020, the L_out form) over the B x R similarity matrix, PML's semantics."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import distances as _distances
from .. import reducers as _reducers
from .. import _validation as _checks
from . import _generic_pair, _pairs
from .base import MetricLoss


class SupConLoss(MetricLoss):
    """l_i = -1/|P_i| sum_{p in P_i} log( exp(z_ip) / sum_{k in P_i u N_i} exp(z_ik) ),   z = s / temperature
    (s the similarity; minus the distance for a distance), 0 for an anchor without positives: every positive
    of the anchor against all its other pairs, positives included (Khosla et al.'s L^sup_out; PML's
    SupConLoss, adapted from HobbitLong/SupContrast).

    PML's SupConLoss(temperature=0.1, *, distance=CosineSimilarity(), reducer=AvgNonZeroReducer(),
    embedding_regularizer=None, embedding_reg_weight=1).
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None).
    For two augmented views pass them stacked with labels = class (or arange(B) for SimCLR) repeated twice.
    Pairs from the labels (a sample is never its own pair) or from indices_tuple (each mined pair once, as
    PML's masks); no positive or no negative pair in the whole batch gives 0. One element loss per anchor,
    so every reducer applies. O(B * R) time and memory with an analytic backward.
    """

    def __init__(self, temperature: float = 0.1, *, distance=None, reducer=None, embedding_regularizer=None,
                 embedding_reg_weight: float = 1.0):
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight,
                         distance_strings=_distances.similarity_strings())
        self.temperature = _pairs.check_positive("temperature", temperature)

    def default_distance(self):
        return _distances.CosineSimilarity()

    def default_reducer(self):
        return _reducers.AvgNonZeroReducer()

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        device = embeddings.device
        if indices_tuple is None:
            same, a, p = _generic_pair.label_pair_masks(labels, ref_labels, ref_emb is None)
            n_neg = B * R - int(torch.count_nonzero(same))
            # PML: no loss unless there are positive and negative pairs (and more than one of either)
            if a.numel() == 0 or n_neg == 0 or (a.numel() <= 1 and n_neg <= 1):
                return self.reduce(_generic_pair.zero_dict(), embeddings, labels)
            excl = "diag" if ref_emb is None else None  # every other sample is a positive or a negative
        else:
            masks = _generic_pair.mat_pair_masks(None, None, indices_tuple, B, R, ref_emb is None, device)
            if masks is None or not bool(masks[0].any()) or not bool(masks[1].any()):
                return self.reduce(_generic_pair.zero_dict(), embeddings, labels)
            pos, neg = masks
            a, p = torch.where(pos)
            excl = ~(pos | neg)
        if _distances._kind(self.distance) in ("CosineSimilarity", "DotProductSimilarity") and \
                self.distance.power == 1:
            # s / T as the GEMM of rows scaled by 1 / sqrt(T) (normalised first when the distance does)
            dtype = _checks.compute_dtype(embeddings)
            scale = self.temperature ** -0.5
            xq = self.distance.maybe_normalize(embeddings.to(dtype)) * scale
            xr = None if ref_emb is None else self.distance.maybe_normalize(ref_emb.to(dtype)) * scale
            losses = _SupConFromGram.apply(xq, xr, a, p, excl)
        else:
            mat = self.matrix(embeddings, ref_emb)
            logits = mat * ((1.0 if self.distance.is_inverted else -1.0) / self.temperature)
            losses = _SupConFromLogits.apply(logits, a, p, excl)
        return self.reduce({"loss": {"losses": losses, "indices": torch.arange(B, device=device),
                                     "reduction_type": "element"}}, embeddings, labels)


def _supcon_rows(z, a, p, excl):
    """Per-anchor losses (P_i lse_i - sum_{P_i} z) / (P_i + tiny) from the logits z (B, R), which it
    overwrites (PML divides by |P_i| + finfo.tiny), lse_i over the anchor's pairs: all entries but those of
    `excl` ("diag": the diagonal; None: none; else a (B, R) bool mask). Positives (a, p) as a sparse list.
    Returns the losses, the softmax matrix times P_i / (P_i + tiny) and 1 / (P_i + tiny): the gradient is
        dl_i/dz_ij = P_i / (P_i + tiny) softmax_i(j) - [j in P_i] / (P_i + tiny)."""
    B = z.shape[0]
    tiny = torch.finfo(z.dtype).tiny
    pos_sum = torch.zeros(B, dtype=z.dtype, device=z.device).index_add_(0, a, z[a, p])
    n_pos = torch.bincount(a, minlength=B).to(z.dtype)
    if isinstance(excl, str):
        z.fill_diagonal_(-torch.inf)
    elif excl is not None:
        torch.where(excl, torch.tensor(-torch.inf, dtype=z.dtype, device=z.device), z, out=z)  # (masked_fill_ is slower)
    mx = z.amax(dim=1, keepdim=True)
    has = torch.isfinite(mx)
    mx = torch.where(has, mx, 0.0)
    e = z.sub_(mx).exp_()
    den = e.sum(dim=1, keepdim=True)
    lse = torch.where(has, den.log() + mx, 0.0).squeeze(1)
    inv = 1.0 / (n_pos + tiny)
    losses = (n_pos * lse - pos_sum) * inv
    e.mul_((n_pos * inv)[:, None] / den.clamp_min(tiny))
    return losses, e, inv


def _supcon_grad(e, a, p, inv, g):
    w = e * g[:, None]
    return w.index_put_((a, p), -(g * inv)[a], accumulate=True)


class _SupConFromGram(torch.autograd.Function):
    """SupCon losses from rows xq (B, D), xr (R, D) or None (the batch itself) with z = xq xr^T inside; the
    backward W -> (W xr, W^T xq) (one GEMM (W + W^T) xq for the batch itself)."""

    @staticmethod
    def forward(ctx, xq, xr, a, p, excl):
        losses, e, inv = _supcon_rows(_generic_pair.gram(xq, xr), a, p, excl)
        ctx.save_for_backward(xq, e, inv, a, p, *(() if xr is None else (xr,)))
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        xq, e, inv, a, p, *rest = ctx.saved_tensors
        dq, dr = _generic_pair.gram_backward(_supcon_grad(e, a, p, inv, g), xq, rest[0] if rest else None)
        return dq, dr, None, None, None


class _SupConFromLogits(torch.autograd.Function):
    """SupCon losses from a logits matrix z (B, R) computed through the distance object."""

    @staticmethod
    def forward(ctx, z, a, p, excl):
        losses, e, inv = _supcon_rows(z.clone(), a, p, excl)
        ctx.save_for_backward(e, inv, a, p)
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        e, inv, a, p = ctx.saved_tensors
        return _supcon_grad(e, a, p, inv, g), None, None, None
