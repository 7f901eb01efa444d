"""Optimisers and per-step learning-rate schedules from a method's config."""
from __future__ import annotations

import math

import torch

OPTIMIZERS = ("sgd", "adam", "adamw", "adamp")
SCHEDULES = ("constant", "cosine", "onecycle", "multistep")


def build_optimizer(config, groups: list[dict]) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam (coupled L2 weight decay, as InsCLR), AdamW, or AdamP (the
    `adamp` package, with STML's settings: nesterov, delta 0.1, wd_ratio 0.1)."""
    name = config.optimizer
    lr, wd = config.lr, config.weight_decay
    groups = [dict(g) for g in groups if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=wd, nesterov=config.nesterov)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    if name == "adamp":
        try:
            from adamp import AdamP
        except ImportError:
            raise ImportError("optimizer 'adamp' needs the adamp package: pip install adamp") from None
        return AdamP(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd, delta=0.1, wd_ratio=0.1,
                     nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(OPTIMIZERS)}")


class _Lambda:
    """lr factor of step t (0-based, counted within the stage): warm-up, then the schedule's shape.
    A callable object (not a closure) so LambdaLR's state_dict stays plain data."""

    def __init__(self, kind: str, total: int, steps_per_epoch: int, warmup: int, milestones, gamma: float):
        self.kind, self.total, self.spe, self.warmup = kind, total, steps_per_epoch, warmup
        self.milestones, self.gamma = tuple(milestones), gamma

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        if self.kind == "cosine":
            span = max(1, self.total - self.warmup)
            return 0.5 * (1 + math.cos(math.pi * min(t - self.warmup, span) / span))
        if self.kind == "multistep":
            epoch = t // max(1, self.spe)
            return self.gamma ** sum(epoch >= m for m in self.milestones)
        return 1.0


def build_scheduler(config, optimizer, total_steps: int, steps_per_epoch: int, milestones=None):
    """A scheduler stepped once per optimiser step. onecycle is torch's OneCycleLR (peak = lr, 30 %
    warm-up, cosine annealing, momentum cycling); multistep milestones are in epochs (`milestones` overrides
    the config's, e.g. a stage's own)."""
    kind = config.schedule
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; available: {', '.join(SCHEDULES)}")
    total_steps = max(1, int(total_steps))
    if kind == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    fn = _Lambda(kind, total_steps, steps_per_epoch, warmup,
                 config.milestones if milestones is None else milestones, config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
