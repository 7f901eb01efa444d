"""STML's loss terms as fused row ops: ssml_fast::row_relative (+ backward), relaxed_contrastive_rows and
self_distillation_kl_rows (C++ on the CPU, CUDA kernels on the GPU; one definition of the per-element math).

Each takes (n, c) matrices with c >= n, rows of a batch against [batch; other columns] (STML with a
memory), so column i of row i is the self pair, and returns its value together with its gradient: the losses
(`ssml_fast.losses.RelaxedContrastiveLoss`, `SelfDistillationKL`, `STMLLoss`) attach autograd from those, so
a loss term is one pass over its matrix forward and none backward, instead of a dozen elementwise passes and
as many dispatches. No autograd of their own: call them through the losses unless you want the raw kernels.
The plain references they are tested against are in tests/test_stml_terms.py.
"""
from __future__ import annotations

import torch


@torch.library.register_fake("ssml_fast::row_relative")
def _row_relative_fake(dist, eps):
    return torch.empty_like(dist), dist.new_empty((dist.shape[0],))


@torch.library.register_fake("ssml_fast::row_relative_backward")
def _row_relative_backward_fake(grad, rel, inv):
    return torch.empty_like(rel)


@torch.library.register_fake("ssml_fast::relaxed_contrastive_rows")
def _relaxed_contrastive_rows_fake(dist, weights, delta, scale, push_cols=-1):
    return dist.new_empty(()), torch.empty_like(dist)


@torch.library.register_fake("ssml_fast::self_distillation_kl_rows")
def _self_distillation_kl_rows_fake(student_dist, teacher_dist, temperature, exclude_self, scale):
    return student_dist.new_empty(()), torch.empty_like(student_dist)


def row_relative(dist: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, c) distances -> (rel, inv): rel_ij = d_ij * inv_i with inv_i = 1 / max(mean_i, eps), mean_i the
    row mean over all c columns with the self pair counted as exactly 0 (eq 3.21), rel_ii = 0."""
    return torch.ops.ssml_fast.row_relative(dist, float(eps))


def row_relative_backward(grad: torch.Tensor, rel: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """dL/d dist from dL/d rel: (grad_ij - 1/c sum_l grad_il rel_il) * inv_i, 0 at the self pair."""
    return torch.ops.ssml_fast.row_relative_backward(grad, rel, inv)


def relaxed_contrastive_rows(dist: torch.Tensor, weights: torch.Tensor, delta: float, scale: float = 1.0,
                             push_cols: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale * sum_i sum_{j != i} w_ij d_ij^2 + (1 - w_ij) [delta - d_ij]_+^2, its gradient in dist).
    push_cols >= 0: columns j >= push_cols take the pull part w_ij d_ij^2 only (no push)."""
    return torch.ops.ssml_fast.relaxed_contrastive_rows(dist, weights, float(delta), float(scale), int(push_cols))


def self_distillation_kl_rows(student_dist: torch.Tensor, teacher_dist: torch.Tensor, temperature: float,
                              exclude_self: bool, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale * sum_i KL(q_i || p_i), scale * (q - p) / T), p_i / q_i = softmax_j(-d_ij / T) of the student /
    teacher distances over the columns (without j = i when exclude_self); the gradient is in student_dist."""
    return torch.ops.ssml_fast.self_distillation_kl_rows(student_dist, teacher_dist, float(temperature),
                                                         bool(exclude_self), float(scale))
