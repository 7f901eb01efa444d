"""SelfDistillationKL (STML; thesis eq 3.22): KL between the row-softmaxes of two relative distances."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import _checks
from . import _pairs
from .relaxed_contrastive_loss import relative_distance


class SelfDistillationKL(nn.Module):
    """L = 1/n sum_i sum_{j != i} q_ij log(q_ij / p_ij),  q = softmax_j(-d^g_ij / T), p = softmax_j(-d^f_ij / T)

    d^f / d^g: relative distances (eq 3.21's row-mean normalisation) of the student's low-dimensional
    embeddings f and the higher-dimensional embeddings g; the softmax runs over j != i (eq 3.22). g is
    detached: the loss trains f only. temperature T = 1 is eq 3.22. exclude_self=False keeps j = i in
    the softmax (what STML's released code does).
    Call: loss(student (n, D_f), teacher (n, D_g)) -> 0-d, the rows of both describing the same n samples.
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
        t = self.temperature
        lf = -relative_distance(student) / t
        with torch.no_grad():
            lg = -relative_distance(teacher.detach()).to(lf.dtype) / t
        if self.exclude_self:
            eye = torch.eye(n, dtype=torch.bool, device=lf.device)
            lf, lg = lf.masked_fill(eye, -torch.inf), lg.masked_fill(eye, -torch.inf)
        log_p = torch.log_softmax(lf, dim=1)
        log_q = torch.log_softmax(lg, dim=1)
        q = log_q.exp()
        kl = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q))
        return kl.sum() / n
