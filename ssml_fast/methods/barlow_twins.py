"""Barlow Twins (Zbontar et al., ICML 2021; official facebookresearch/barlowtwins): the cross-correlation of
the two views' standardised projections is pushed to the identity.

Per step: z_i = projector(trunk(v_i)), standardised per dimension over the batch (BN without affine);
c = z1n^T z2n / B; loss = sum_i (1 - c_ii)^2 + lambda sum_{i != j} c_ij^2 (`barlow_twins_loss`).
Retrieval uses the trunk's features.

Official defaults: projector 8192-8192-8192 (Linear - BN - ReLU twice, then Linear without bias), lambda
0.0051, LARS with lr 0.2 (weights) / 0.0048 (biases and BN) x B / 256, wd 1.5e-6, batch 2048, 10 warm-up
epochs then cosine, 1000 epochs. Deviations: SGD with momentum at lr 0.2 for B = 256 instead of LARS (as
simclr / byol here), one learning rate for all parameters; the standardisation is functional (the official
BN module's running statistics are never used).

"small" preset (28 x 28 MNIST-5k): projector 1024-1024-1024, 10 epochs, batch 128, Adam 1e-3 one-cycle,
strong views, lambda 0.0051. Validation split of the training classes (bench/select_presets.py: train 0-2,
validate 3-4; bench/results_presets.md): preset MAP@R 0.730 / 0.745 (seeds 0 / 1), projector 256 0.744 /
0.748 (mean +0.008, inside the preset's seed spread 0.015, so the preset is kept), mild views 0.696, lr
3e-4 0.722 (seed 0); untrained network 0.779 / 0.767: no candidate beats it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ._ssl import mlp
from ..distributed import gather_batch
from .base import Batch, DataInfo, Method, MethodConfig, StepOutput


def _standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    # BatchNorm1d(affine=False) in training mode: biased variance, eps inside the square root.
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """sum_i (1 - c_ii)^2 + lambd sum_{i != j} c_ij^2, c = standardise(z1)^T standardise(z2) / B (the sum of
    squares of c is taken from the B x B Gram matrices when B < D; the D x D matrix is never formed then)."""
    if z1.dim() != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError(f"z1 and z2 must both be (B >= 2, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b, d = z1.shape
    a1, a2 = _standardise(z1), _standardise(z2)
    diag = (a1 * a2).sum(0) / b                       # c_ii
    on = (1.0 - diag).pow(2).sum()
    if b < d:
        # sum_ij c_ij^2 = ||A1^T A2||_F^2 / B^2 = <A1 A1^T, A2 A2^T> / B^2: two B x B Gram matrices (B^2 D
        # flops) instead of the D x D cross-correlation (B D^2): 8x fewer at B = 128, D = 1024.
        total = (a1 @ a1.t()).mul_(a2 @ a2.t()).sum() / (b * b)
    else:
        total = (a1.t() @ a2).div_(b).pow(2).sum()
    off = total - diag.pow(2).sum()
    return on + lambd * off


@dataclass
class BarlowTwinsConfig(MethodConfig):
    epochs: int = 1000
    batch_size: int = 2048
    optimizer: str = "sgd"
    lr: float = 1.6                  # 0.2 x B / 256
    momentum: float = 0.9
    weight_decay: float = 1.5e-6
    schedule: str = "cosine"
    warmup_epochs: float = 10.0
    augment: Any = "strong"
    projector_dim: int = 8192        # width of the three projector layers
    lambd: float = 0.0051

    def __post_init__(self):
        super().__post_init__()
        if not self.lambd >= 0:
            raise ValueError(f"lambd must be >= 0, got {self.lambd}")


class BarlowTwins(Method):
    name: ClassVar[str] = "barlow_twins"
    Config: ClassVar[type] = BarlowTwinsConfig
    uses_labels: ClassVar[bool] = False
    presets: ClassVar[dict] = {
        "official": {},
        "small": dict(epochs=10, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=1e-4,
                      schedule="onecycle", warmup_epochs=0.0, projector_dim=1024),
    }

    def __init__(self, config: BarlowTwinsConfig, data: DataInfo):
        super().__init__(config, data)
        self.trunk = self.build_trunk()
        d = config.projector_dim
        self.projector = mlp(self.trunk.out_dim, d, d, 3, last_bias=False)

    def views(self, images, generator):
        return [self.augment(images, generator), self.augment(images, generator)]

    def training_step(self, batch: Batch) -> StepOutput:
        v1, v2 = batch.views
        z1, z2 = self.projector(self.trunk(v1)), self.projector(self.trunk(v2))
        # Under torchrun the batch statistics (cross-correlation / variance / covariance) are over the global
        # batch, as the official code's all-reduce / FullGatherLayer (identity on one process).
        z1, z2 = gather_batch(z1, z2)
        return StepOutput(barlow_twins_loss(z1, z2, self.config.lambd))

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.trunk(x), dim=1)
