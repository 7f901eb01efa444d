"""SpreadingLoss: invariant and spreading instance features (Ye et al. 2019; thesis eqs 3.1-3.5)."""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable
import torch.nn.functional as F
from torch import nn

from .. import _validation as _checks
from . import _pairs


class SpreadingLoss(nn.Module):
    """Instance-discrimination loss over the 2B unit vectors of a batch and its augmented view.

    With y the 2B L2-normalised embeddings (originals then augmentations, i's positive is i +- B) and
    P_ij = exp(y_i . y_j / T) / sum_{k != i} exp(y_i . y_k / T)   (softmax over the other 2B - 1),
        J = -1/(2B) sum_i [ log P_{i, pos(i)} + sum_{j != i, pos(i)} log(1 - P_ij) ]      (eq 3.5),
    as in the authors' code (BatchCriterion): the second factor of every inner product is detached, so
    the gradient flows through the anchor row only. T = temperature (0.1).
    Call: loss(embeddings (B, D), augmented (B, D)) -> 0-d; augmented[i] is a view of embeddings[i].
    B = 1 gives 0 (one positive, no negatives) with zero gradient.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = _pairs.check_positive("temperature", temperature)

    def forward(self, embeddings: torch.Tensor, augmented: torch.Tensor) -> torch.Tensor:
        _checks.check_embeddings("embeddings", embeddings)
        _checks.check_embeddings("augmented", augmented)
        if augmented.shape != embeddings.shape:
            raise ValueError(f"augmented must have the shape of embeddings {tuple(embeddings.shape)}, "
                             f"got {tuple(augmented.shape)}")
        _checks.check_same_device("augmented", augmented, embeddings.device)
        dtype = _checks.compute_dtype(embeddings)
        B = embeddings.shape[0]
        if B == 0:
            return _pairs.zero_loss(embeddings, augmented)
        with _pairs.autocast_off(embeddings):
            y = F.normalize(torch.cat([embeddings, augmented]).to(dtype), dim=1)
            logits = (y @ y.detach().T) / self.temperature  # (2B, 2B); the detached side: anchor rows only
            return _SpreadingFromLogits.apply(logits, B)


class _SpreadingFromLogits(torch.autograd.Function):
    """J = -1/n sum_i [log P_i,pos(i) + sum_{j in neg(i)} log(1 - P_ij)], P = row softmax over k != i,
    with the analytic gradient w.r.t. the logits l (computed in the forward pass, one (n, n) matrix kept):
        dJ/dl_ik = 1/n [ P_ik (1 - A_i) + [k in neg(i)] P_ik / (1 - P_ik) - [k = pos(i)] ],
        A_i = sum_{j in neg(i)} P_ij / (1 - P_ij)."""

    @staticmethod
    def forward(ctx, logits, B):
        n = logits.shape[0]
        idx = torch.arange(n, device=logits.device)
        pos_col = (idx + B) % n
        eye = torch.eye(n, dtype=torch.bool, device=logits.device)
        z = logits.masked_fill(eye, -torch.inf)
        log_p = z - torch.logsumexp(z, dim=1, keepdim=True)
        neg = ~eye
        neg[idx, pos_col] = False
        log_not = _log1mexp(torch.where(neg, log_p, -1.0))  # log(1 - P), finite on the negatives
        value = -(log_p[idx, pos_col].sum() + torch.where(neg, log_not, 0.0).sum()) / n
        p = log_p.exp()
        ratio = torch.where(neg, (log_p - log_not).exp_(), 0.0)  # P / (1 - P)
        grad = p * (1 - ratio.sum(dim=1, keepdim=True))
        grad.add_(ratio)
        grad[idx, pos_col] -= 1
        ctx.save_for_backward(grad.div_(n))
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None


def _log1mexp(x):
    """log(1 - e^x) for x < 0, accurate on both sides of -log 2 (Maechler 2012). Most softmax entries are
    far below 1/2, so the expm1 branch is evaluated only where it is needed."""
    out = torch.log1p(x.exp().neg_())
    near_one = x > -math.log(2)
    if bool(near_one.any()):
        out[near_one] = torch.log(torch.expm1(x[near_one]).neg_())
    return out
