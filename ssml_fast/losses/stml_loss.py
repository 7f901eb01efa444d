"""STMLLoss: the whole Self-Taught Metric Learning objective (Kim et al., CVPR 2022; thesis 3.3, Alg. 2)."""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .. import _validation as _checks
from .. import ops
from ..ops.contextual import contextual_similarity
from . import _pairs
from .relaxed_contrastive_loss import RelaxedContrastiveLoss
from .self_distillation_kl import SelfDistillationKL

FORMS = ("code", "thesis")
_HALF = (torch.float16, torch.bfloat16)


class STMLParts(NamedTuple):
    total: torch.Tensor
    rc_f: torch.Tensor
    rc_g: torch.Tensor
    kl: torch.Tensor
    weights: torch.Tensor  # (N, N) contextualised similarities w used as soft targets


class STMLLoss(nn.Module):
    """L = 1/2 (RC(f) + RC(g)) + KL(P^g || P^f), with soft targets w from the teacher.

    Call: loss(student_f (N, D_f), student_g (N, D_g), teacher_g (N, D_t), ids (N,)) -> 0-d, where ids are
    dataset indices (the views of one image share an id). `loss.parts` holds the last STMLParts.

    - w = (w^P + w^C) / 2: `ssml_fast.ops.contextual_similarity` of the teacher's g embeddings (L2-normalised
      inside; pairwise part exp(-||t_i - t_j||^2 / sigma); k-reciprocal neighbour lists of size k with the
      row itself and same-id rows ranked first). Computed without gradient: a target.
    - RC(e) = relaxed contrastive loss on d^_ij = ||e_i - e_j|| / (row mean of ||e_i - e_k|| over all N
      columns, the zero self-distance included), margin delta, pairs j != i.
    - KL: P^g_i = softmax_j(-d^g_ij / T) from student g (detached), P^f_i the same from student f; only f
      gets a gradient from it.

    form="code" (default) is the official code exactly (METHODS.md 1.3): RC divided by N (N - 1); the KL's
    softmax over full rows including j = i, summed and divided by N, times T^2 (kl_div's distillation
    scaling). form="thesis" is the thesis's equations: RC divided by N (eq 3.21), the KL over j != i
    (eq 3.22), no T^2. Both reuse RelaxedContrastiveLoss and SelfDistillationKL.

    Defaults are the official CUB/Cars values: sigma 3 (argparse default 1, every README command 3),
    k 10 (= 5 neighbours x 2 views), delta 1, T 1.
    """

    def __init__(self, sigma: float = 3.0, k: int = 10, delta: float = 1.0, temperature: float = 1.0,
                 form: str = "code"):
        super().__init__()
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < float("inf"):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.sigma, self.k = float(sigma), k
        self.form = _checks.check_choice("form", form, FORMS)
        self.rc = RelaxedContrastiveLoss(delta=delta)
        self.kl = SelfDistillationKL(temperature=temperature, exclude_self=(form == "thesis"))
        self.parts: STMLParts | None = None

    def forward(self, student_f: torch.Tensor, student_g: torch.Tensor, teacher_g: torch.Tensor,
                ids: torch.Tensor, memory: "tuple | None" = None, weights: torch.Tensor | None = None,
                memory_push: bool = True) -> torch.Tensor:
        """memory: optional (mem_f (M, D_f), mem_g (M, D_g), mem_t (M, D_t), mem_ids (M,)) of past samples
        (detached; see `memory_terms`), with optional precomputed soft targets `weights` (N, N + M).
        Without memory (or with M = 0) this is the in-batch loss above; `weights` (N, N) then replaces the
        teacher's in-batch contextual similarity (teacher_g is not read). memory_push: see `memory_terms`."""
        for name, t in (("student_f", student_f), ("student_g", student_g), ("teacher_g", teacher_g)):
            _checks.check_embeddings(name, t)
        n = student_f.shape[0]
        for name, t in (("student_g", student_g), ("teacher_g", teacher_g)):
            if t.shape[0] != n:
                raise ValueError(f"{name} has {t.shape[0]} rows but student_f has {n}")
            _checks.check_same_device(name, t, student_f.device)
        ids = _checks.check_labels("ids", ids, n, student_f.device)
        if n < 2:  # nothing to contrast (also B = 0): a connected zero, before the k check
            z = _pairs.zero_loss(student_f, student_g)
            self.parts = STMLParts(z, z.detach(), z.detach(), z.detach(), student_f.new_ones(n, n))
            return z
        with _pairs.autocast_off(student_f):
            return self._forward(student_f.float() if student_f.dtype in _HALF else student_f,
                                 student_g.float() if student_g.dtype in _HALF else student_g,
                                 teacher_g, ids, memory, weights, memory_push)

    def _forward(self, student_f, student_g, teacher_g, ids, memory, weights=None, memory_push=True):
        n = student_f.shape[0]
        if memory is not None and memory[0].shape[0] > 0:
            return self.memory_terms(student_f, student_g, teacher_g, ids, *memory, weights=weights,
                                     memory_push=memory_push)
        if weights is not None:
            return self._terms(student_f, student_g, _checked_weights(weights, n, n, student_f.device))
        if self.k > n:
            raise ValueError(f"k={self.k} neighbours need a batch of at least k rows, got N={n}")
        w = contextual_similarity(teacher_g.detach(), self.k, self.sigma, ids).to(student_f.device)
        return self._terms(student_f, student_g, w)

    def memory_terms(self, student_f, student_g, teacher_g, ids, mem_f, mem_g, mem_t, mem_ids,
                     weights: torch.Tensor | None = None, memory_push: bool = True) -> torch.Tensor:
        """The loss with C = N + M columns: the N batch rows against batch ∪ memory (thesis 6.2).

        w = contextual_similarity over the C teacher embeddings [teacher_g; mem_t] with ids [ids; mem_ids],
        rows of the batch (N, C). d^ = row-mean-normalised distance of each batch row to all C columns
        (batch columns carry gradient, memory columns are constants), the mean over all C columns.
        RC = sum_{i, j != i} [w d^^2 + (1 - w) [delta - d^]_+^2] / (N (C - 1)) ("code"; / N for "thesis");
        KL over the C columns (j = i kept in the "code" form). With M = 0 this is exactly `forward`.
        Memory rows sharing an id with a batch row must have been removed by the caller.
        weights: the (N, C) soft targets when the caller has them already (stml_memory's ContextualCache
        computes the same w from a cached memory Gram); teacher_g / mem_t are then not read.
        memory_push=False drops the push part (1 - w) [delta - d^]_+^2 of the memory columns: memory entries
        then only pull the batch rows towards those the targets call similar (stml_memory's
        memory_columns="pull"); the normaliser N (C - 1) and the KL are unchanged.
        """
        n, m = student_f.shape[0], mem_f.shape[0]
        c = n + m
        if weights is None:
            w = self.memory_targets(teacher_g, ids, mem_t, mem_ids).to(student_f.device)
        else:
            w = _checked_weights(weights, n, c, student_f.device)
        return self._terms(student_f, student_g, w, mem_f, mem_g, memory_push)

    def memory_targets(self, teacher_g, ids, mem_t, mem_ids) -> torch.Tensor:
        """The soft targets w (N, N + M) of the batch rows: the contextual similarity over the N + M teacher
        embeddings [teacher_g; mem_t] with ids [ids; mem_ids], no gradient."""
        n, c = teacher_g.shape[0], teacher_g.shape[0] + mem_t.shape[0]
        if self.k > c:
            raise ValueError(f"k={self.k} exceeds the {c} rows of batch and memory")
        t_all = torch.cat([teacher_g.detach(), mem_t.detach().to(teacher_g.dtype)])
        return contextual_similarity(t_all, self.k, self.sigma, torch.cat([ids, mem_ids.to(ids.device)]))[:n]

    def _terms(self, student_f, student_g, w, mem_f=None, mem_g=None, memory_push=True):
        """0.5 (RC(f) + RC(g)) + KL over the batch rows against [batch; memory] (no memory: the batch)."""
        n = student_f.shape[0]
        c = n + (0 if mem_f is None else mem_f.shape[0])
        # form "code": RC / (N (C - 1)), KL / N times T^2; "thesis": RC / N, KL / N.
        rc_scale = 1.0 / (n * (c - 1)) if self.form == "code" else 1.0 / n
        kl_scale = (self.kl.temperature ** 2 if self.form == "code" else 1.0) / n
        total, rc_f, rc_g, kl = _STMLTerms.apply(student_f, student_g, w.detach(), mem_f, mem_g, self.rc, self.kl,
                                                 rc_scale, kl_scale, memory_push)
        self.parts = STMLParts(total.detach(), rc_f, rc_g, kl, w)
        return total


def _checked_weights(weights, n, c, device):
    if tuple(weights.shape) != (n, c):
        what = "batch rows x batch ∪ memory" if c != n else "batch rows x batch"
        raise ValueError(f"weights must have shape ({n}, {c}) ({what}), got {tuple(weights.shape)}")
    return weights.detach().to(device)


def _as(t, dtype):
    """t in dtype (t itself when it is already: a no-op .to() still costs a dispatch, ~6 us)."""
    return t if t.dtype == dtype else t.to(dtype)


# Below the Autograd dispatch key: _STMLTerms is the autograd node, so the distance op's own registered
# autograd (a Python wrapper that redispatches, ~20 us a call even with grad off) has nothing to do here.
# A private torch API, as torch.library's own autograd uses; without it the plain call is the same op.
_below_autograd = getattr(torch._C, "_AutoDispatchBelowAutograd", contextlib.nullcontext)


def _distances(x, mem):
    """Euclidean distances of the batch rows x to [x; mem]: (the full (n, c) matrix, its two blocks). The
    batch block comes from the op's x-against-itself form (exact zero diagonal, one backward GEMM)."""
    with _below_autograd():
        d_bb = torch.ops.ssml_fast.pairwise_distance.default(x, x, "euclidean")
        if mem is None:
            return d_bb, d_bb, None
        d_bm = torch.ops.ssml_fast.pairwise_distance.default(x, _as(mem.detach(), x.dtype), "euclidean")
    return torch.cat([d_bb, d_bm], dim=1), d_bb, d_bm


class _STMLTerms(torch.autograd.Function):
    """The whole student side of STMLLoss as one autograd node, built from the same fused kernels as
    RelaxedContrastiveLoss (sum_and_grad), SelfDistillationKL (sum_and_grad) and relative_distance
    (ops.row_relative): forward computes each term's value and its gradient in the relative distances,
    backward chains them through the relative normalisation and the distance GEMMs. At N = 240 a loss is
    then a dozen op calls instead of ~60 ops and seven Python autograd nodes, which were most of its
    non-GEMM time. The memory (mem_f / mem_g, constants) only adds columns; its GEMMs take no gradient.
    Returns (total, rc_f, rc_g, kl); only total is differentiable."""

    @staticmethod
    def forward(ctx, f, g, w, mem_f, mem_g, rc, kl, rc_scale, kl_scale, memory_push=True):
        d_f, f_bb, f_bm = _distances(f, mem_f)
        d_g, g_bb, g_bm = _distances(g, mem_g)
        rel_f, inv_f = ops.row_relative(d_f)
        rel_g, inv_g = ops.row_relative(d_g)
        # 0.5 * scale: RC enters the total halved; the halving is exact in floating point, so 2 * value is
        # the term itself, bit for bit.
        push_cols = -1 if memory_push else f.shape[0]  # memory columns (from n on) pull only
        rc_f, grad_f = rc.sum_and_grad(rel_f, _as(w, rel_f.dtype), 0.5 * rc_scale, push_cols)
        rc_g, grad_g = rc.sum_and_grad(rel_g, _as(w, rel_g.dtype), 0.5 * rc_scale, push_cols)
        kl_v, grad_kl = kl.sum_and_grad(rel_f, _as(rel_g, rel_f.dtype), kl_scale)  # g is the target: no gradient
        grad_f.add_(grad_kl)
        del grad_kl
        ctx.save_for_backward(f, g, mem_f, mem_g, f_bb, f_bm, g_bb, g_bm, rel_f, inv_f, rel_g, inv_g, grad_f, grad_g)
        total = (rc_f + rc_g) + _as(kl_v, rc_f.dtype)
        parts = (rc_f * 2, rc_g * 2, kl_v)
        ctx.mark_non_differentiable(*parts)
        return (total, *parts)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_total, *_):
        f, g, mem_f, mem_g, f_bb, f_bm, g_bb, g_bm, rel_f, inv_f, rel_g, inv_g, grad_f, grad_g = ctx.saved_tensors
        out_f = out_g = None
        # g_total scales the (n, c) distance gradient (a fresh tensor), not the (n, d) embedding gradient.
        if ctx.needs_input_grad[0]:
            h = ops.row_relative_backward(grad_f, rel_f, inv_f).mul_(g_total)
            out_f = _embedding_grad(h, f, mem_f, f_bb, f_bm)
        if ctx.needs_input_grad[1]:
            h = ops.row_relative_backward(grad_g, rel_g, inv_g).mul_(g_total)
            out_g = _embedding_grad(h, g, mem_g, g_bb, g_bm)
        return out_f, out_g, None, None, None, None, None, None, None, None


def _embedding_grad(h, x, mem, d_bb, d_bm):
    """dL/dx from dL/d[d_bb, d_bm] (n, c) through the distance op's backward (the memory block: no y GEMM)."""
    n = x.shape[0]
    if mem is None:
        return torch.ops.ssml_fast.pairwise_distance_backward(h, x, x, d_bb, "euclidean", False)[0]
    gx = torch.ops.ssml_fast.pairwise_distance_backward(h[:, :n], x, x, d_bb, "euclidean", False)[0]
    gm = torch.ops.ssml_fast.pairwise_distance_backward(h[:, n:], x, mem.detach().to(x.dtype), d_bm, "euclidean",
                                                        False)[0]
    return gx.add_(gm)
