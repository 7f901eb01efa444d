"""CircleLoss (Sun et al. 2020, pair-wise labels) over the B x R cosine-similarity matrix, PML's semantics."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import distances as _distances
from .. import reducers as _reducers
from .. import _validation as _checks
from . import _generic_pair, _pairs
from .base import MetricLoss


class CircleLoss(MetricLoss):
    """For anchor i with positives P_i and negatives N_i, s the cosine similarity:
        z_ij = -gamma [1 + m - s_ij]_+ (s_ij - (1 - m))     j in P_i   (O_p = 1 + m, Delta_p = 1 - m)
        z_ij =  gamma [s_ij + m]_+     (s_ij - m)           j in N_i   (O_n = -m,    Delta_n = m)
        l_i  = softplus( logsumexp_{j in P_i} z_ij + logsumexp_{j in N_i} z_ij ),   0 if P_i or N_i is empty,
    the self-paced weights [.]_+ are constants of the gradient (detached), as in the paper and PML.

    PML's CircleLoss(m=0.4, gamma=80, *, distance=CosineSimilarity(), reducer=AvgNonZeroReducer(),
    embedding_regularizer=None, embedding_reg_weight=1); the distance must be a CosineSimilarity (ours or
    PML's). Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None).
    Pairs come from the labels or from indices_tuple (each mined pair once, as PML's masks). The loss_dict
    has one element loss per anchor ("element", as PML), so every reducer applies.
    O(B * R) time and memory: one cosine matrix, a few elementwise passes and an analytic backward (PML
    gathers and scatters the pairs through boolean indexing and keeps an autograd graph over them).
    """

    def __init__(self, m: float = 0.4, gamma: float = 80, *, distance=None, reducer=None,
                 embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight)
        if _distances._kind(self.distance) != "CosineSimilarity" and \
                not isinstance(self.distance, _distances.CosineSimilarity):
            raise ValueError(f"CircleLoss requires the distance to be CosineSimilarity, got "
                             f"{type(self.distance).__name__}")
        self.m = _pairs.check_real("m", m)
        self.gamma = _pairs.check_positive("gamma", gamma)
        self.op, self.on = 1 + self.m, -self.m
        self.delta_p, self.delta_n = 1 - self.m, self.m

    def default_distance(self):
        return _distances.CosineSimilarity()

    def default_reducer(self):
        return _reducers.AvgNonZeroReducer()

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        device = embeddings.device
        if indices_tuple is None:
            excl, a, p = _generic_pair.label_pair_masks(labels, ref_labels, ref_emb is None)
            n_same = torch.count_nonzero(excl, dim=1)
            if a.numel() <= 1 and int(B * R - n_same.sum()) <= 1:  # PML's GenericPairLoss skip rule
                return self.reduce(_generic_pair.zero_dict(), embeddings, labels)
            has_neg = n_same < R
        else:
            masks = _generic_pair.mat_pair_masks(None, None, indices_tuple, B, R, ref_emb is None, device)
            if masks is None:
                return self.reduce(_generic_pair.zero_dict(), embeddings, labels)
            pos, neg = masks
            a, p = torch.where(pos)
            excl, has_neg = ~neg, torch.count_nonzero(neg, dim=1) > 0
        consts = (a, p, excl, has_neg, self.gamma, self.op, self.on, self.delta_p, self.delta_n)
        if _distances._kind(self.distance) == "CosineSimilarity" and self.distance.power == 1:
            # cos = normalised rows' dot products: the GEMM and its backward live in the Function
            dtype = _checks.compute_dtype(embeddings)
            xq = F.normalize(embeddings.to(dtype), p=2, dim=1)
            xr = None if ref_emb is None else F.normalize(ref_emb.to(dtype), p=2, dim=1)
            losses = _CircleFromGram.apply(xq, xr, *consts)
        else:
            losses = _CircleFromMatrix.apply(self.matrix(embeddings, ref_emb), *consts)
        return self.reduce({"loss": {"losses": losses, "indices": torch.arange(B, device=device),
                                     "reduction_type": "element"}}, embeddings, labels)


def _circle_rows(S, a, p, excl, has_neg, gamma, op, on, delta_p, delta_n):
    """Per-anchor circle losses from the similarity matrix S (B, R), which it overwrites, and the gradient
    matrix W = dl_i/ds_ij:
        W_ij = sigmoid(t_i) softmax_{P_i}(z)_j (-gamma [O_p - s_ij]_+)    j in P_i
        W_ij = sigmoid(t_i) softmax_{N_i}(z)_j ( gamma [s_ij - O_n]_+)    j in N_i,   t_i = lse_P + lse_N.
    Positives (a, p) (sorted by anchor) are handled as a sparse list, negatives as the dense matrix with the
    entries of `excl` (everything that is not a negative) left out."""
    B = S.shape[0]
    tiny = torch.finfo(S.dtype).tiny
    ninf = torch.tensor(-torch.inf, dtype=S.dtype, device=S.device)
    sp = S[a, p]
    cp = torch.sub(op, sp).clamp_min_(0).mul_(-gamma)
    zp = cp * (sp - delta_p)
    mxp = torch.full((B,), -torch.inf, dtype=S.dtype, device=S.device).scatter_reduce_(0, a, zp, "amax")
    mxp = torch.where(torch.isfinite(mxp), mxp, 0.0)
    ep = torch.exp(zp - mxp[a])
    denp = torch.zeros(B, dtype=S.dtype, device=S.device).index_add_(0, a, ep)
    lse_p = denp.log() + mxp  # -inf without positives
    c = torch.sub(S, on).clamp_min_(0).mul_(gamma)  # gamma [s - O_n]_+, the detached weight of the negatives
    z = S.sub_(delta_n).mul_(c)
    torch.where(excl, ninf, z, out=z)  # masked_fill_ is ~10x slower than where on CPU
    mx = z.amax(dim=1, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, 0.0)
    e = z.sub_(mx).exp_()
    den = e.sum(dim=1, keepdim=True)
    lse_n = (den.log() + mx).squeeze(1)
    valid = (denp > 0) & has_neg
    t = torch.where(valid, lse_p + lse_n, 0.0)
    losses = torch.where(valid, F.softplus(t), 0.0)
    w = torch.where(valid, torch.sigmoid(t), 0.0)
    W = c.mul_(e).mul_(w[:, None] / den.clamp_min(tiny))
    W.index_put_((a, p), w[a] * ep / denp[a].clamp_min(tiny) * cp, accumulate=True)
    return losses, W


class _CircleFromGram(torch.autograd.Function):
    """Circle losses from L2-normalised rows xq (B, D), xr (R, D) or None (the batch itself): S = xq xr^T
    inside, the backward W -> (W xr, W^T xq) (one GEMM (W + W^T) xq for the batch itself)."""

    @staticmethod
    def forward(ctx, xq, xr, *consts):
        losses, W = _circle_rows(_generic_pair.gram(xq, xr), *consts)
        ctx.save_for_backward(xq, W, *(() if xr is None else (xr,)))
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        xq, W, *rest = ctx.saved_tensors
        dq, dr = _generic_pair.gram_backward(W * g[:, None], xq, rest[0] if rest else None)
        return (dq, dr) + (None,) * 9


class _CircleFromMatrix(torch.autograd.Function):
    """Circle losses from a similarity matrix S (B, R) computed by the distance object."""

    @staticmethod
    def forward(ctx, S, *consts):
        losses, W = _circle_rows(S.clone(), *consts)
        ctx.save_for_backward(W)
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (W,) = ctx.saved_tensors
        return (W * g[:, None],) + (None,) * 9
