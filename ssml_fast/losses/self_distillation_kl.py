"""SelfDistillationKL (STML; thesis eq 3.22): KL between the row-softmaxes of two relative distances."""
from __future__ import annotations

import torch
from torch import nn

from .. import _validation as _checks
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
                                self.exclude_self) / n


class _KLSum(torch.autograd.Function):
    """sum_i KL(q_i || p_i), p_i = softmax_j(-d^f_ij / T), q_i = softmax_j(-d^g_ij / T) over the columns j
    (without j = i, column i, when exclude_self), q a constant; closed-form gradient (q - p) / T
    with respect to d^f (14 passes over the matrix instead of autograd through masked softmaxes)."""

    @staticmethod
    def forward(ctx, d_f, d_g, temperature, exclude_self):
        n = d_f.shape[0]
        diag = torch.arange(n, device=d_f.device)
        lf, lg = d_f * (-1.0 / temperature), d_g * (-1.0 / temperature)
        if exclude_self:
            lf[diag, diag] = -torch.inf
            lg[diag, diag] = -torch.inf
        log_p = torch.log_softmax(lf, dim=1)
        log_q = torch.log_softmax(lg, dim=1)
        del lf, lg
        q = torch.exp(log_q)
        diff = log_q.sub_(log_p)
        diff.masked_fill_(q == 0, 0.0)   # q log q -> 0 where q underflows or is excluded (-inf - -inf)
        kl = (q * diff).sum()
        ctx.save_for_backward(q.sub_(log_p.exp_()).mul_(1.0 / temperature))  # (q - p) / T
        return kl

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None
