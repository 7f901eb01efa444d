"""SelfDistillationKL (STML; thesis eq 3.22): KL between the row-softmaxes of two relative distances."""
from __future__ import annotations

import torch
from torch import nn

from .. import _validation as _checks
from .. import ops
from . import _pairs
from .relaxed_contrastive_loss import relative_distance


class SelfDistillationKL(nn.Module):
    """L = 1/n sum_i sum_{j != i} q_ij log(q_ij / p_ij),  q = softmax_j(-d^g_ij / T), p = softmax_j(-d^f_ij / T)

    d^f / d^g: relative distances (eq 3.21's row-mean normalisation) of the student's low-dimensional
    embeddings f and the higher-dimensional embeddings g; the softmax runs over j != i (eq 3.22). g is
    detached: the loss trains f only. temperature T = 1 is eq 3.22. exclude_self=False keeps j = i in
    the softmax (what STML's released code does).
    Call: loss(student (n, D_f), teacher (n, D_g)) -> 0-d, the rows of both describing the same n samples;
    or loss.from_distances(student_dist (n, n), teacher_dist (n, n)) with distances computed elsewhere.
    """

    def __init__(self, temperature: float = 1.0, exclude_self: bool = True):
        super().__init__()
        self.temperature = _pairs.check_positive("temperature", temperature)
        self.exclude_self = bool(exclude_self)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _checks.check_embeddings("student", student)
        _checks.check_embeddings("teacher", teacher)
        _checks.check_same_device("teacher", teacher, student.device)
        n = student.shape[0]
        if teacher.shape[0] != n:
            raise ValueError(f"teacher has {teacher.shape[0]} rows but student has {n}")
        if n < (3 if self.exclude_self else 2):
            return _pairs.zero_loss(student)
        with _pairs.autocast_off(student):
            with torch.no_grad():
                dg = relative_distance(teacher.detach())
            return self.from_distances(relative_distance(student), dg)

    def from_distances(self, student_dist: torch.Tensor, teacher_dist: torch.Tensor) -> torch.Tensor:
        """The same loss from precomputed (n, n) distance matrices (e.g. other normalisations);
        teacher_dist is detached."""
        for name, d in (("student_dist", student_dist), ("teacher_dist", teacher_dist)):
            _checks.check_tensor(name, d)
            if d.dim() != 2 or d.shape[0] > d.shape[1] or not d.is_floating_point():
                raise ValueError(f"{name} must be a floating (n, n) matrix (or (n, c), c > n, for rows of a batch "
                                 f"against [batch; memory]), got {d.dtype} {tuple(d.shape)}")
        if teacher_dist.shape != student_dist.shape:
            raise ValueError(f"teacher_dist has shape {tuple(teacher_dist.shape)} but student_dist has "
                             f"{tuple(student_dist.shape)}")
        n, c = student_dist.shape
        if c < (3 if self.exclude_self else 2):
            return _pairs.zero_loss(student_dist)
        with _pairs.autocast_off(student_dist):
            dtype = _checks.compute_dtype(student_dist)
            return _KLSum.apply(student_dist.to(dtype), teacher_dist.detach().to(dtype), float(self.temperature),
                                self.exclude_self, 1.0 / n)

    def sum_and_grad(self, student_dist: torch.Tensor, teacher_dist: torch.Tensor, scale: float = 1.0):
        """(scale * sum_i KL_i, its gradient in student_dist), without autograd: the fused kernel behind
        from_distances, for callers that chain several terms into one autograd node (STMLLoss). Both (n, c)
        of one float dtype; the caller ensures c >= 3 with exclude_self (>= 2 without)."""
        return ops.self_distillation_kl_rows(student_dist, teacher_dist, self.temperature, self.exclude_self, scale)


class _KLSum(torch.autograd.Function):
    """scale * sum_i KL(q_i || p_i), p_i = softmax_j(-d^f_ij / T), q_i = softmax_j(-d^g_ij / T) over the
    columns j (without j = i, column i, when exclude_self), q a constant; the fused op returns the gradient
    scale * (q - p) / T in d^f with the value (three passes over each row instead of ~14 over the matrix)."""

    @staticmethod
    def forward(ctx, d_f, d_g, temperature, exclude_self, scale):
        value, grad = ops.self_distillation_kl_rows(d_f, d_g, temperature, exclude_self, scale)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None, None
