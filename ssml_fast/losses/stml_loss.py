"""STMLLoss: the whole Self-Taught Metric Learning objective (Kim et al., CVPR 2022; thesis 3.3, Alg. 2)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .. import _validation as _checks
from ..ops.contextual import contextual_similarity
from . import _pairs
from .relaxed_contrastive_loss import RelaxedContrastiveLoss, relative_distance
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
                ids: torch.Tensor, memory: "tuple | None" = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """memory: optional (mem_f (M, D_f), mem_g (M, D_g), mem_t (M, D_t), mem_ids (M,)) of past samples
        (detached; see `memory_terms`), with optional precomputed soft targets `weights` (N, N + M).
        Without memory (or with M = 0) this is the in-batch loss above."""
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
                                 teacher_g, ids, memory, weights)

    def _forward(self, student_f, student_g, teacher_g, ids, memory, weights=None):
        n = student_f.shape[0]
        if memory is not None and memory[0].shape[0] > 0:
            return self.memory_terms(student_f, student_g, teacher_g, ids, *memory, weights=weights)
        if self.k > n:
            raise ValueError(f"k={self.k} neighbours need a batch of at least k rows, got N={n}")
        w = contextual_similarity(teacher_g.detach(), self.k, self.sigma, ids).to(student_f.device)
        # Each relative distance matrix once (the GEMMs are most of the loss's cost): RC and KL share them.
        d_f, d_g = relative_distance(student_f), relative_distance(student_g)
        rc_f, rc_g = self.rc.from_distances(d_f, w), self.rc.from_distances(d_g, w)
        kl = self.kl.from_distances(d_f, d_g.detach())
        if self.form == "code":
            rc_f, rc_g = rc_f / (n - 1), rc_g / (n - 1)
            kl = kl * self.kl.temperature ** 2
        total = 0.5 * (rc_f + rc_g) + kl
        self.parts = STMLParts(total.detach(), rc_f.detach(), rc_g.detach(), kl.detach(), w)
        return total

    def memory_terms(self, student_f, student_g, teacher_g, ids, mem_f, mem_g, mem_t, mem_ids,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
        """The loss with C = N + M columns: the N batch rows against batch ∪ memory (thesis 6.2).

        w = contextual_similarity over the C teacher embeddings [teacher_g; mem_t] with ids [ids; mem_ids],
        rows of the batch (N, C). d^ = row-mean-normalised distance of each batch row to all C columns
        (batch columns carry gradient, memory columns are constants), the mean over all C columns.
        RC = sum_{i, j != i} [w d^^2 + (1 - w) [delta - d^]_+^2] / (N (C - 1)) ("code"; / N for "thesis");
        KL over the C columns (j = i kept in the "code" form). With M = 0 this is exactly `forward`.
        Memory rows sharing an id with a batch row must have been removed by the caller.
        weights: the (N, C) soft targets when the caller has them already (stml_memory's ContextualCache
        computes the same w from a cached memory Gram); teacher_g / mem_t are then not read.
        """
        n, m = student_f.shape[0], mem_f.shape[0]
        c = n + m
        if self.k > c:
            raise ValueError(f"k={self.k} exceeds the {c} rows of batch and memory")
        if weights is None:
            t_all = torch.cat([teacher_g.detach(), mem_t.to(teacher_g.dtype)])
            w = contextual_similarity(t_all, self.k, self.sigma, torch.cat([ids, mem_ids.to(ids.device)]))
            w = w[:n].to(student_f.device)
        else:
            if tuple(weights.shape) != (n, c):
                raise ValueError(f"weights must have shape ({n}, {c}) (batch rows x batch ∪ memory), got "
                                 f"{tuple(weights.shape)}")
            w = weights.detach().to(student_f.device)
        d_f = _row_distances(student_f, mem_f)
        d_g = _row_distances(student_g, mem_g)
        scale = 1.0 / (n * (c - 1)) if self.form == "code" else 1.0 / n
        kl_scale = self.kl.temperature ** 2 / n if self.form == "code" else 1.0 / n
        rc_f, rc_g, kl = _RectTerms.apply(d_f, d_g, w.to(d_f.dtype), float(self.rc.delta),
                                          float(self.kl.temperature), self.form == "thesis", scale, kl_scale)
        total = 0.5 * (rc_f + rc_g) + kl
        self.parts = STMLParts(total.detach(), rc_f.detach(), rc_g.detach(), kl.detach(), w)
        return total


class _RectTerms(torch.autograd.Function):
    """RC(f), RC(g) and KL of the memory loss from the raw distances D (N, C) (column i of row i is the self
    distance, 0), with closed-form gradients: a handful of passes over the N x C matrices instead of autograd
    through ~40 elementwise ops (at N 240, C 4336 those passes, not the GEMMs, were most of the loss).

    With mu_i = mean_j D_ij (all C columns), d = D / mu, r = [delta - d]_+, over j != i:
      RC = scale * sum w d^2 + (1 - w) r^2,          dRC/dd_ij = scale * 2 (w d - (1 - w) r) = a_ij
      KL = kl_scale * sum_i sum_j q_ij (log q_ij - log p_ij), p / q = softmax_j(-d^f / T) / softmax_j(-d^g / T)
           (d^g a constant; j = i excluded in the thesis form),   dKL/dd^f_ij = kl_scale (q - p)_ij / T = b_ij
      and through the row mean: dL/dD_ij = (x_ij - (1/C) sum_l x_il d_il) / mu_i for x = a or b.
    tests/test_stml.py checks values and gradients against the plain autograd formulas and by gradcheck.
    """

    @staticmethod
    def forward(ctx, d_f, d_g, w, delta, temperature, exclude_self, scale, kl_scale):
        n, c = d_f.shape
        diag = torch.arange(n, device=d_f.device)
        rc_f, grad_rc_f, rel_f, inv_f = _rc_and_grad(d_f, w, delta, scale, diag)
        rc_g, grad_rc_g, rel_g, _ = _rc_and_grad(d_g, w, delta, scale, diag)
        lf, lg = rel_f * (-1.0 / temperature), rel_g * (-1.0 / temperature)
        if exclude_self:
            lf[diag, diag] = -torch.inf
            lg[diag, diag] = -torch.inf
        log_p, log_q = torch.log_softmax(lf, dim=1), torch.log_softmax(lg, dim=1)
        del lf, lg
        q = torch.exp(log_q)
        diff = log_q.sub_(log_p)                       # log q - log p (log_q is not needed after this)
        if exclude_self:
            diff[diag, diag] = 0.0                     # -inf - -inf: the excluded self column adds nothing
        kl = (q * diff).sum() * kl_scale
        b = q.sub_(log_p.exp_()).mul_(kl_scale / temperature)   # (q - p) * kl_scale / T
        grad_kl = _through_row_mean(b, rel_f, inv_f)
        ctx.save_for_backward(grad_rc_f, grad_rc_g, grad_kl)
        return rc_f, rc_g, kl

    @staticmethod
    def backward(ctx, g_rc_f, g_rc_g, g_kl):
        grad_rc_f, grad_rc_g, grad_kl = ctx.saved_tensors
        grad_f = grad_rc_f * g_rc_f + grad_kl * g_kl
        return grad_f, grad_rc_g * g_rc_g, None, None, None, None, None, None


def _rc_and_grad(d, w, delta, scale, diag):
    """RC value (0-d), its gradient with respect to the raw distances, d / mu and 1 / mu."""
    c = d.shape[1]
    inv = 1.0 / (d.sum(dim=1) / c).clamp_min(1e-12)
    rel = d * inv[:, None]
    r = torch.clamp_min(delta - rel, 0.0)
    rr, dd = r * r, rel * rel
    term = rr + w * (dd - rr)                          # w d^2 + (1 - w) r^2
    term[diag, diag] = 0.0                             # j = i is not a pair
    value = term.sum() * scale
    a = torch.mul(w, rel + r).sub_(r).mul_(2.0 * scale)  # 2 (w d - (1 - w) r) = 2 (w (d + r) - r)
    a[diag, diag] = 0.0
    return value, _through_row_mean(a, rel, inv), rel, inv


def _through_row_mean(x, rel, inv):
    """dL/dD from dL/d(d) = x for d = D / mean_j D: (x_ij - (1/C) sum_l x_il d_il) / mu_i."""
    c = x.shape[1]
    s = (x * rel).sum(dim=1) / c
    return x.sub_(s[:, None]).mul_(inv[:, None])


def _row_distances(batch: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """(N, N + M) euclidean distances of the batch rows to [batch; memory (detached)], the self-distance
    exactly 0. Float32 at least (half inputs are promoted). Two blocks rather than one distance to
    cat([batch, memory]): the memory block's backward is then one GEMM into the batch rows only, not a
    second one into memory rows that take no gradient (at M = 4096, d = 1024: ~60 ms per step here)."""
    dtype = _checks.compute_dtype(batch)
    b = batch.to(dtype)
    return torch.cat([_pairs.distance(b, None, "euclidean"),
                      _pairs.distance(b, memory.detach().to(dtype), "euclidean")], dim=1)
