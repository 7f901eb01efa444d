"""Pieces shared by the self-supervised baselines (moco, byol, simsiam, dino, barlow_twins, vicreg).

- `mlp`: the projector / predictor MLPs of those papers (Linear - BN - ReLU blocks, optional BN at the end);
- `ema_parameters_`: the momentum update of a key / target / teacher network, over *parameters only*, as
  the official MoCo, BYOL and DINO code do (BatchNorm running statistics of the EMA network are its own,
  from its own forward passes in train mode);
- `cosine_ramp`: BYOL's and DINO's cosine schedule of the EMA momentum from a base value to 1;
- `StepCounter`: optimiser steps done, kept in the state dict so that schedules resume exactly.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, *, last_bn: bool = False,
        last_bn_affine: bool = True, last_bias: bool = True) -> nn.Sequential:
    """`layers` Linear layers; every one but the last is followed by BN and ReLU (and has no bias: BN's
    shift replaces it). `last_bn` puts a BN after the last Linear (SimSiam's projector, affine=False)."""
    for name, v in (("in_dim", in_dim), ("hidden", hidden), ("out_dim", out_dim), ("layers", layers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out_dim, bias=last_bias and not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    seq = nn.Sequential(*mods)
    seq.out_dim = out_dim
    return seq


@torch.no_grad()
def ema_parameters_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter (same structure)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t, o = list(target.parameters()), list(online.parameters())
    if len(t) != len(o) or any(a.shape != b.shape for a, b in zip(t, o)):
        raise ValueError("target and online networks must have the same parameters")
    if momentum == 1.0:
        return
    # One fused multi-tensor op instead of a Python loop over ~20 tensors (the step overhead budget).
    torch._foreach_lerp_(t, o, 1.0 - momentum)


def cosine_ramp(base: float, final: float, step: int, total: int) -> float:
    """base at step 0, final at step `total` (and after), half-cosine in between (BYOL's tau schedule)."""
    if total <= 0:
        return final
    progress = min(max(step / total, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


class StepCounter(nn.Module):
    """Optimiser steps done (a buffer, so checkpoints carry it) and the run's total, for schedules."""

    def __init__(self, steps_per_epoch: int, epochs: int):
        super().__init__()
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.total = self.steps_per_epoch * int(epochs)
        self.register_buffer("done", torch.zeros((), dtype=torch.long))

    @property
    def step(self) -> int:
        return int(self.done)

    @property
    def epoch(self) -> float:
        """Fractional epoch of the next step."""
        return self.step / self.steps_per_epoch

    def tick(self) -> None:
        self.done += 1
