"""STMLLoss: the whole Self-Taught Metric Learning objective (Kim et al., CVPR 2022; thesis 3.3, Alg. 2)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..ops import _checks
from ..ops.contextual import contextual_similarity
from . import _pairs
from .relaxed_contrastive_loss import RelaxedContrastiveLoss
from .self_distillation_kl import SelfDistillationKL

FORMS = ("code", "thesis")


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
                ids: torch.Tensor) -> torch.Tensor:
        for name, t in (("student_f", student_f), ("student_g", student_g), ("teacher_g", teacher_g)):
            _checks.check_embeddings(name, t)
        n = student_f.shape[0]
        for name, t in (("student_g", student_g), ("teacher_g", teacher_g)):
            if t.shape[0] != n:
                raise ValueError(f"{name} has {t.shape[0]} rows but student_f has {n}")
            _checks.check_same_device(name, t, student_f.device)
        ids = _checks.check_labels("ids", ids, n, student_f.device)
        if self.k > n:
            raise ValueError(f"k={self.k} neighbours need a batch of at least k rows, got N={n}")
        if n < 2:
            z = _pairs.zero_loss(student_f, student_g)
            self.parts = STMLParts(z, z.detach(), z.detach(), z.detach(), student_f.new_ones(n, n))
            return z
        w = contextual_similarity(teacher_g.detach(), self.k, self.sigma, ids).to(student_f.device)
        rc_f, rc_g = self.rc(student_f, w), self.rc(student_g, w)
        kl = self.kl(student_f, student_g)
        if self.form == "code":
            rc_f, rc_g = rc_f / (n - 1), rc_g / (n - 1)
            kl = kl * self.kl.temperature ** 2
        total = 0.5 * (rc_f + rc_g) + kl
        self.parts = STMLParts(total.detach(), rc_f.detach(), rc_g.detach(), kl.detach(), w)
        return total
