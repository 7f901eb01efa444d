"""The transfer-learning recipe on a trunk: freeze its first N stages, or freeze every BatchNorm.

`FreezableTrunk` is a mixin for trunks that list their stages (`self._stage_modules()`: one list of
modules per stage, in forward order). After `configure_freezing(n, bn_freeze)`:
  * the parameters of stages 0..n-1 have requires_grad=False (the optimiser never sees them), and those
    modules stay in eval mode whatever `.train()` is called with, so their BatchNorm running statistics
    are the pretrained ones and never move;
  * bn_freeze (STML's `--bn_freeze 1`, official `main.py`): every BatchNorm of the trunk stays in eval
    mode and its affine weight / bias are frozen, as the official code does at the start of each epoch.
The trunk's `train()` override re-applies this after nn.Module.train, so a method (or the trainer) that
calls `method.train()` cannot switch a frozen BatchNorm back to batch statistics.
"""
from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class FreezableTrunk:
    freeze_stages: int = 0
    bn_freeze: bool = False

    def _stage_modules(self) -> list[list[nn.Module]]:
        raise NotImplementedError

    @property
    def num_stages(self) -> int:
        return len(self._stage_modules())

    def configure_freezing(self, freeze_stages: int = 0, bn_freeze: bool = False) -> None:
        n = self.num_stages
        if isinstance(freeze_stages, bool) or not isinstance(freeze_stages, int) or not 0 <= freeze_stages <= n:
            raise ValueError(f"freeze_stages must be an int in [0, {n}] (this backbone has {n} stages), "
                             f"got {freeze_stages!r}")
        if not isinstance(bn_freeze, bool):
            raise ValueError(f"bn_freeze must be true or false, got {bn_freeze!r}")
        self.freeze_stages, self.bn_freeze = freeze_stages, bn_freeze
        for stage in self._stage_modules()[:freeze_stages]:
            for m in stage:
                m.requires_grad_(False)
        if bn_freeze:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.requires_grad_(False)
        self.train(self.training)

    def frozen_modules(self) -> list[nn.Module]:
        """The modules kept in eval mode: frozen stages, then (bn_freeze) every BatchNorm."""
        out = [m for stage in self._stage_modules()[:self.freeze_stages] for m in stage]
        if self.bn_freeze:
            out += [m for m in self.modules() if isinstance(m, _BatchNorm)]
        return out

    def train(self, mode: bool = True):
        super().train(mode)  # type: ignore[misc]
        if mode:
            for m in self.frozen_modules():
                m.eval()
        return self
