"""AngularLoss (Wang et al. 2017, the N-pair angular form) per positive pair, exact, in O(B * R) memory."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import distances as _distances
from .. import _validation as _checks
from . import _generic_pair, _pairs
from .base import MetricLoss


class AngularLoss(MetricLoss):
    """For every positive pair (a, p) against the negatives n of a (label(n) != label(a)):
        f_apn = 4 tan^2(alpha) (x_a + x_p)^T x_n - 2 (1 + tan^2(alpha)) x_a^T x_p
        l_ap  = log(1 + sum_n exp(f_apn))
    (Wang et al. 2017, eq 8/9), the mean over positive pairs. alpha is in degrees.

    PML's AngularLoss(alpha=40, *, distance=LpDistance(p=2, power=1, normalize_embeddings=True),
    reducer=MeanReducer(), embedding_regularizer=None, embedding_reg_weight=1), with PML's semantics: x_a and
    x_p are L2-normalised (distance.normalize), the negatives x_n enter as given (pass normalised
    embeddings for the paper's form, as PML's tests do); the negatives of a pair are all reference samples of
    another label, also when an indices_tuple gives the pairs (a mined tuple only selects the (a, p) pairs,
    duplicates counted). So labels are always required.
    Call: loss(embeddings (B, D), labels (B,), indices_tuple=None, ref_emb=None (R, D), ref_labels=None (R,)).
    Per-pair losses ("pos_pair") go to the reducer.

    Exact without B x R x R tensors, O(B * R) memory: (x_a + x_p)^T x_n = G[a, n] + H[p, n] with
    G = X_a Ref^T and H = X_p Ref^T, and exp(k4 (G + H)) = exp(k4 G) exp(k4 H), so each pair's sum over its
    negatives is the dot product of two rows of precomputed (B, R) / (R, R) matrices A = exp(k4 G),
    Bm = exp(k4 H) (shifted by row maxima, masked to the negatives). With the labels the pairs of a class
    are one small block, A_c Bm_c^T, a batched GEMM over classes; mined pairs are grouped into slots of one
    pair per anchor. Should a pair's shifted sum be small enough to have lost terms to underflow, the exact
    per-pair log-sum-exp (chunks of pairs) is used instead. The backward is analytic. For the batch itself
    the negatives x_n = ||x_n|| xhat_n, so G = (Xhat Xhat^T) diag(||x||): one symmetric GEMM forward and one
    backward.
    """

    def __init__(self, alpha: float = 40, *, distance=None, reducer=None, embedding_regularizer=None,
                 embedding_reg_weight: float = 1.0):
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight)
        d = self.distance
        if _distances._kind(d) != "LpDistance" or d.p != 2 or d.power != 1 or not d.normalize_embeddings:
            raise ValueError("AngularLoss requires the distance to be LpDistance(p=2, power=1, "
                             f"normalize_embeddings=True), got {d!r}")
        a = _pairs.check_real("alpha", alpha)
        if not 0 < a < 90:
            raise ValueError(f"alpha must be an angle in degrees in (0, 90), got {alpha}")
        self.alpha = torch.tensor(math.radians(a), dtype=torch.float64)  # float64 as PML (np.radians)

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        if labels is None:
            raise ValueError("AngularLoss needs labels (the negatives of every pair come from them)")
        if ref_emb is not None and ref_emb is not embeddings and ref_labels is None:
            raise ValueError("ref_labels is required when ref_emb is given")
        return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        device = embeddings.device
        ref = labels if ref_labels is None else ref_labels
        blocks = None
        if indices_tuple is None:
            excl, a, p, blocks = _generic_pair.label_pair_masks(labels, ref_labels, ref_emb is None, True)
        else:
            a, p, a2, _ = _pairs.as_pairs(indices_tuple, B, R, device)
            if a2.numel() == 0:
                a = a2
            excl = labels[:, None] == ref[None, :]
        if a.numel() == 0:
            return self.reduce({"loss": {"losses": 0, "indices": None, "reduction_type": "already_reduced"}},
                               embeddings, labels)
        # the factorised sums shift H's rows by their maxima over the negatives of p, which are those of a
        # when label(p) == label(a) (always for pairs from the labels)
        same_label = indices_tuple is None or bool((labels[a] == ref[p]).all())
        t = float(torch.tan(self.alpha) ** 2)
        consts = (4.0 * t, 2.0 * (1.0 + t), same_label, blocks)
        dtype = _checks.compute_dtype(embeddings)
        x = embeddings.to(dtype)
        if ref_emb is None:
            xa = self.distance.normalize(x)
            losses = _AngularSelf.apply(xa, torch.linalg.vector_norm(x, dim=1), a, p, excl, *consts)
        else:
            r = ref_emb.to(dtype)
            xa, xp = self.distance.normalize(x), self.distance.normalize(r)
            c = (xa[a] * xp[p]).sum(dim=1)
            exclH = ref[:, None] == ref[None, :]
            losses = _AngularRef.apply(xa @ r.T, xp @ r.T, c, a, p, excl, exclH, *consts)
        return self.reduce({"loss": {"losses": losses, "indices": (a, p), "reduction_type": "pos_pair"}},
                           embeddings, labels)


# Shifted terms are <= 1; a pair sum below this may have lost terms to underflow (then: exact pair path).
_UNDERFLOW = {torch.float32: 1e-20, torch.float64: 1e-250}


def _to_blocks(M, rows, identity, k, C):
    """The rows of M placed at their block rows -> (C, k, cols), zero padding rows."""
    n_rows = C * k
    if identity:
        return M.view(C, k, M.shape[1])
    if rows.numel() == n_rows:  # no padding: a permutation
        inv = torch.empty_like(rows)
        inv[rows] = torch.arange(rows.numel(), device=rows.device)
        return M.index_select(0, inv).view(C, k, M.shape[1])
    out = M.new_zeros(n_rows, M.shape[1])
    out.index_copy_(0, rows, M)
    return out.view(C, k, M.shape[1])


def _shifted_exp(M, excl, k4, inplace=False):
    """exp(k4 (M - m)) off `excl` (0 on it), m the row maximum off excl (rows without entries: 0); M is
    overwritten with inplace=True, k4 = 1 skips the scaling (M already scaled)."""
    ninf = torch.tensor(-torch.inf, dtype=M.dtype, device=M.device)
    T = torch.where(excl, ninf, M, out=M) if inplace else torch.where(excl, ninf, M)  # (masked_fill: 10x slower)
    m = T.amax(dim=1, keepdim=True)
    has = torch.isfinite(m)
    m = torch.where(has, m, 0.0)
    T = T.sub_(m)
    return (T if k4 == 1.0 else T.mul_(k4)).exp_(), m.squeeze(1), has.squeeze(1)


def _slots(a: torch.Tensor, B: int):
    """Mined pairs grouped into slots: slot j holds the j-th pair of every anchor with more than j pairs.
    Yields (idx, rows): the slot's pair indices and anchors (rows None when it holds every anchor 0..B-1
    in order, so the (B, R) matrices need no row gather)."""
    order = torch.argsort(a, stable=True)
    sa = a[order]
    counts = torch.bincount(sa, minlength=B)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(a.numel(), device=a.device) - starts[sa]
    for j in range(int(counts.max())):
        sel = rank == j
        rows = sa[sel]
        yield order[sel], (None if rows.numel() == B else rows)


def _core_forward(ctx, G, H, c, a, p, excl, exclH, k4, k2, same_label, blocks, G_raw=None):
    """Per-pair losses l_k = softplus(f_k), f_k = log sum_{n not in excl[a_k]} exp(k4 (G[a_k, n] + H[p_k, n]))
    - k2 c_k (H None: the batch itself, H = G). Factorised: A = exp(k4 (G - mG)) off excl, Bm likewise for H
    (the batch itself: Bm = A), f_k = log E_k + k4 (mG_a + mH_p) - k2 c_k with E_k = A[a_k] . Bm[p_k].
    G_raw: G is k4 G already, owned (overwritten), and G_raw() gives G for the exact pair path."""
    B = G.shape[0]
    ctx.k4, ctx.k2, ctx.self_ref = k4, k2, H is None
    if same_label:
        A, mG, has_neg = _shifted_exp(G, excl, 1.0, inplace=True) if G_raw is not None else _shifted_exp(G, excl, k4)
        if G_raw is not None:
            mG = mG / k4
        Bm, mH, _ = (A, mG, None) if H is None else _shifted_exp(H, exclH, k4)
        if blocks is not None:
            Ab = _to_blocks(A, blocks.row_a, blocks.identity_a, blocks.ka, blocks.C)
            Bb = Ab if H is None else _to_blocks(Bm, blocks.row_p, blocks.identity_p, blocks.kp, blocks.C)
            E = torch.bmm(Ab, Bb.transpose(1, 2))[blocks.cls, blocks.i, blocks.j]
            ctx.blocks, ctx.slots = blocks, None
        else:
            E = torch.empty_like(c)
            ctx.slots, ctx.blocks = list(_slots(a, B)), None
            for idx, rows in ctx.slots:
                prod = Bm.index_select(0, p[idx])
                E[idx] = prod.mul_(A if rows is None else A.index_select(0, rows)).sum(dim=1)
        if not bool((has_neg[a] & ~(E >= _UNDERFLOW[E.dtype])).any()):
            f = E.log() + k4 * (mG[a] + mH[p]) - k2 * c  # -inf for a pair without negatives
            ctx.mode = "factored"
            ctx.fsaved = (A, Bm, E, f, a, p) + ((Ab, Bb) if blocks is not None else ())
            return F.softplus(f)
    if G_raw is not None:
        G = G_raw()
    Hm = G if H is None else H
    losses, size = _pairs_forward(G, Hm, c, a, p, excl, k4, k2)
    ctx.mode, ctx.size = "pairs", size
    ctx.fsaved = (G, Hm, c, a, p, excl, losses)
    return losses


def _core_backward(ctx, g, col_scale=None):
    """(dG, dH, dc) for the upstream per-pair gradient g; the batch itself: dH None (summed into dG).
    col_scale (factorised mode only): dG's columns times col_scale / k4 (the caller's chain rule folded in)."""
    k4, k2 = ctx.k4, ctx.k2
    if ctx.mode == "pairs":
        G, H, c, a, p, excl, losses = ctx.fsaved
        return _pairs_backward(G, H, c, a, p, excl, losses, g, k4, k2, ctx.size, ctx.self_ref)
    A, Bm, E, f, a, p, *blk = ctx.fsaved
    # q_k = g_k sigmoid(f_k) / E_k; dG = k4 A * (sum_k q_k Bm[p_k] on row a_k), dH = k4 Bm * (sum_k q_k A[a_k]
    # on row p_k); dc_k = -k2 g_k sigmoid(f_k)
    sg = g * torch.sigmoid(f)
    q = torch.where(E > 0, sg / E, 0.0)
    dc = -k2 * sg
    if ctx.blocks is not None:
        b = ctx.blocks
        Ab, Bb = blk
        Q = q.new_zeros(b.C, b.ka, b.kp).index_put_((b.cls, b.i, b.j), q, accumulate=True)
        def rows_of(blockmat, rows, identity):
            flat = blockmat.view(-1, blockmat.shape[2])
            return flat if identity else flat.index_select(0, rows)
        if ctx.self_ref:
            T = rows_of(torch.bmm(Q + Q.transpose(1, 2), Ab), b.row_a, b.identity_a)
            return T.mul_(A).mul_(k4 if col_scale is None else col_scale[None, :]), None, dc
        T = rows_of(torch.bmm(Q, Bb), b.row_a, b.identity_a)
        U = rows_of(torch.bmm(Q.transpose(1, 2), Ab), b.row_p, b.identity_p)
        return T.mul_(A).mul_(k4), U.mul_(Bm).mul_(k4), dc
    T = torch.zeros_like(A)
    U = T if ctx.self_ref else torch.zeros_like(Bm)  # the batch itself: dG and dH are one matrix
    for idx, rows in ctx.slots:
        qi = q[idx][:, None]
        pi = p[idx]
        if rows is None:
            T.addcmul_(Bm.index_select(0, pi), qi)
            U.index_add_(0, pi, A * qi)
        else:
            T.index_add_(0, rows, Bm.index_select(0, pi).mul_(qi))
            U.index_add_(0, pi, A.index_select(0, rows).mul_(qi))
    dG = T.mul_(A).mul_(k4 if col_scale is None else col_scale[None, :])
    return dG, (None if ctx.self_ref else U.mul_(Bm).mul_(k4)), dc


class _AngularSelf(torch.autograd.Function):
    """The batch itself from xhat (B, D) (normalised rows) and the norms n (B,): S = xhat xhat^T,
    G = S diag(n) (x_n = n_n xhat_n), c = S[a, p]; backward dS = dG diag(n) (+ dc on the pairs),
    dxhat = (dS + dS^T) xhat (one GEMM), dn = column sums of dG * S."""

    @staticmethod
    def forward(ctx, xa, n, a, p, excl, k4, k2, same_label, blocks):
        S = xa @ xa.T
        # k4 G = S diag(k4 n) in one pass, overwritten by A; G itself only for the exact pair path
        losses = _core_forward(ctx, S * (k4 * n)[None, :], None, S[a, p], a, p, excl, None, k4, k2, same_label,
                               blocks, G_raw=lambda: S * n[None, :])
        ctx.save_for_backward(xa, n, S, a, p)
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        xa, n, S, a, p = ctx.saved_tensors
        if ctx.mode == "factored":
            dS, _, dc = _core_backward(ctx, g, col_scale=ctx.k4 * n)  # dG diag(n) straight away
            dn = torch.where(n > 0, (dS * S).sum(dim=0) / torch.where(n > 0, n, 1.0), 0.0)
        else:
            dG, _, dc = _core_backward(ctx, g)
            dn = (dG * S).sum(dim=0)
            dS = dG.mul_(n[None, :])
        dS.index_put_((a, p), dc, accumulate=True)
        return dS.T.contiguous().add_(dS) @ xa, dn, None, None, None, None, None, None, None


class _AngularRef(torch.autograd.Function):
    """A separate reference set: G (B, R), H (R, R), c (P,) from autograd GEMMs."""

    @staticmethod
    def forward(ctx, G, H, c, a, p, excl, exclH, k4, k2, same_label, blocks):
        return _core_forward(ctx, G, H, c, a, p, excl, exclH, k4, k2, same_label, blocks)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        dG, dH, dc = _core_backward(ctx, g)
        return (dG, dH, dc) + (None,) * 8


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _pair_logits(G, H, a, p, excl, k4):
    z = torch.index_select(G, 0, a).add_(torch.index_select(H, 0, p)).mul_(k4)
    ninf = torch.tensor(-torch.inf, dtype=z.dtype, device=z.device)
    return torch.where(torch.index_select(excl, 0, a), ninf, z, out=z)


def _pairs_forward(G, H, c, a, p, excl, k4, k2):
    """The losses pair by pair (chunks of about B pairs: O(B * R) memory): exact for any input."""
    size = max(64, G.shape[0])
    lse = torch.empty(a.numel(), dtype=G.dtype, device=G.device)
    for sl in _chunks(a.numel(), size):
        z = _pair_logits(G, H, a[sl], p[sl], excl, k4)
        mx = z.amax(dim=1, keepdim=True)
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        lse[sl] = (z.sub_(mx).exp_().sum(dim=1, keepdim=True).log_() + mx).squeeze(1)
    return F.softplus(lse - k2 * c), size


def _pairs_backward(G, H, c, a, p, excl, losses, g, k4, k2, size, self_ref):
    """pi_kn = g_k exp(f_kn - l_k) (never overflows): dG[a_k] += k4 pi_k, dH[p_k] += k4 pi_k,
    dc_k = -k2 g_k (1 - exp(-l_k))."""
    dG = torch.zeros_like(G)
    dH = dG if self_ref else torch.zeros_like(H)
    shift = (k2 * c + losses)[:, None]
    for sl in _chunks(a.numel(), size):
        w = _pair_logits(G, H, a[sl], p[sl], excl, k4).sub_(shift[sl]).exp_().mul_((g[sl] * k4)[:, None])
        dG.index_add_(0, a[sl], w)
        dH.index_add_(0, p[sl], w)
    dc = -k2 * g * (-torch.expm1(-losses))
    return dG, (None if self_ref else dH), dc
