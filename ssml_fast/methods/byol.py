"""BYOL, Bootstrap Your Own Latent (Grill et al., NeurIPS 2020; official deepmind-research/byol).

Per step: two views; the online network (trunk -> projector -> predictor) predicts the target network's
projection of the other view; the target (trunk -> projector) is an EMA of the online one and gets no
gradient. Loss, symmetric: byol_loss(p1, z2) + byol_loss(p2, z1) with byol_loss(p, z) = mean over rows of
2 - 2 cos(p, z) = || p/|p| - z/|z| ||^2. After the optimiser step the target's parameters move by EMA with
momentum tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2 (k = step, K = total steps): tau_base at the
start, 1 at the end. Retrieval uses the online trunk's features.

Official defaults: projector and predictor MLP 4096 hidden -> 256 (Linear - BN - ReLU - Linear), tau_base
0.996, LARS at lr 0.2 x B / 256, wd 1.5e-6, 10 warm-up epochs then cosine, 300 epochs (the paper's
ablation length; its headline is 1000), batch 4096. Deviations: LARS is not in torch, so, as for SimCLR,
the official preset uses SGD with momentum at the same learning rate for B = 256; the target's BN statistics
are its own (BN layers in train mode use batch statistics anyway, as the official code).

"small" preset (28 x 28 MNIST-5k): 10 epochs, batch 128, Adam 1e-3 one-cycle, strong views, projector and
predictor 512 hidden -> 128, tau_base 0.99 (0.996 over only 170 steps leaves the target nearly frozen at
its initialisation for the first epochs). On the validation split of the training classes
(bench/select_presets.py's: train 0-2, validate 3-4; seed 0) tau_base 0.99 gave MAP@R 0.743 against
0.734 for 0.996 (one seed: within the usual seed spread of ~0.02; untrained network 0.773).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._ssl import StepCounter, cosine_ramp, ema_parameters_, mlp
from .base import Batch, DataInfo, Method, MethodConfig, StepOutput


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """mean over rows of 2 - 2 cos(p, z); z is the target (pass it detached)."""
    if p.dim() != 2 or p.shape != z.shape:
        raise ValueError(f"p and z must both be (B, D), got {tuple(p.shape)} and {tuple(z.shape)}")
    return (2.0 - 2.0 * F.cosine_similarity(p, z, dim=1, eps=1e-12)).mean()


@dataclass
class BYOLConfig(MethodConfig):
    epochs: int = 300
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.2                 # x B / 256
    momentum: float = 0.9
    weight_decay: float = 1.5e-6
    schedule: str = "cosine"
    warmup_epochs: float = 10.0
    augment: Any = "strong"
    projection_dim: int = 256
    hidden_dim: int = 4096          # projector and predictor hidden width
    tau_base: float = 0.996         # target EMA momentum at step 0, cosine to 1

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.tau_base <= 1.0:
            raise ValueError(f"tau_base must be in [0, 1], got {self.tau_base}")


class _Network(nn.Module):
    def __init__(self, trunk: nn.Module, projector: nn.Module):
        super().__init__()
        self.trunk, self.projector = trunk, projector

    def forward(self, x):
        return self.projector(self.trunk(x))


class BYOL(Method):
    name: ClassVar[str] = "byol"
    Config: ClassVar[type] = BYOLConfig
    uses_labels: ClassVar[bool] = False
    presets: ClassVar[dict] = {
        "official": {},
        "small": dict(epochs=10, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=1e-4,
                      schedule="onecycle", warmup_epochs=0.0, projection_dim=128, hidden_dim=512, tau_base=0.99),
    }

    def __init__(self, config: BYOLConfig, data: DataInfo):
        super().__init__(config, data)
        trunk = self.build_trunk()
        self.online = _Network(trunk, mlp(trunk.out_dim, config.hidden_dim, config.projection_dim))
        self.predictor = mlp(config.projection_dim, config.hidden_dim, config.projection_dim)
        self.target = copy.deepcopy(self.online).requires_grad_(False)  # official: same initial weights
        self.steps = StepCounter(data.num_train // config.batch_size, config.epochs)

    def tau(self) -> float:
        """The EMA momentum of the coming update (after `steps.done` optimiser steps)."""
        return cosine_ramp(self.config.tau_base, 1.0, self.steps.step, self.steps.total)

    def views(self, images, generator):
        return [self.augment(images, generator), self.augment(images, generator)]

    def training_step(self, batch: Batch) -> StepOutput:
        v1, v2 = batch.views
        # One forward per view, as the official code: BN statistics are per view.
        p1, p2 = self.predictor(self.online(v1)), self.predictor(self.online(v2))
        with torch.no_grad():
            z1, z2 = self.target(v1), self.target(v2)
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return StepOutput(loss, {"tau": self.tau()})

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        ema_parameters_(self.target, self.online, self.tau())
        self.steps.tick()

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.online.trunk(x), dim=1)
