"""VICReg, variance-invariance-covariance regularisation (Bardes, Ponce, LeCun, ICLR 2022; official
facebookresearch/vicreg).

Per step: z_i = expander(trunk(v_i)); loss (`vicreg_loss`) = sim * mse(z1, z2)
+ std * (mean relu(1 - std(z1)) + mean relu(1 - std(z2))) / 2 (std per dimension over the batch, of
sqrt(var + 1e-4)) + cov * (sum of squared off-diagonal covariances of z1, and of z2) / D.
Retrieval uses the trunk's features.

Official defaults: expander 8192-8192-8192 (Linear - BN - ReLU twice, then Linear without bias),
coefficients 25 / 25 / 1, LARS base lr 0.2 x B / 256, wd 1e-6, batch 2048, 10 warm-up epochs then cosine,
1000 epochs. Deviation: SGD with momentum at the same lr rule instead of LARS (as simclr / byol here);
the official all-gather of z across ranks before the variance and covariance terms is not done (one
device).

"small" preset (28 x 28 MNIST-5k): expander 1024-1024-1024, 10 epochs, batch 128, Adam 1e-3 one-cycle,
strong views. Validation split of the training classes (bench/select_presets.py: train 0-2, validate 3-4;
bench/results_presets.md): preset MAP@R 0.754 / 0.776 (seeds 0 / 1), expander 256 0.764 / 0.777 (mean
+0.006, inside the preset's seed spread 0.021: preset kept), mild views 0.721, lr 3e-4 0.740 (seed 0);
untrained network 0.779 / 0.767 (mean 0.773 against the preset's 0.765).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ._ssl import mlp
from ..distributed import gather_batch
from .base import Batch, DataInfo, Method, MethodConfig, StepOutput


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0) -> torch.Tensor:
    """The official VICReg.forward on (B >= 2, D) projections."""
    if z1.dim() != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError(f"z1 and z2 must both be (B >= 2, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b, d = z1.shape
    repr_loss = F.mse_loss(z1, z2)
    x, y = z1 - z1.mean(0), z2 - z2.mean(0)
    std_x, std_y = torch.sqrt(x.var(0) + 1e-4), torch.sqrt(y.var(0) + 1e-4)
    std_loss = F.relu(1.0 - std_x).mean() / 2 + F.relu(1.0 - std_y).mean() / 2

    def off_diagonal_sq(m):
        var = m.pow(2).sum(0) / (b - 1)               # diagonal of cov = m^T m / (b - 1)
        if b < d:
            # ||m^T m||_F = ||m m^T||_F: the B x B Gram (B^2 D flops) instead of the D x D covariance (B D^2).
            gram = m @ m.t()
            return gram.pow(2).sum() / (b - 1) ** 2 - var.pow(2).sum()
        cov = m.t() @ m / (b - 1)
        return cov.pow(2).sum() - var.pow(2).sum()

    cov_loss = (off_diagonal_sq(x) + off_diagonal_sq(y)) / d
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


@dataclass
class VICRegConfig(MethodConfig):
    epochs: int = 1000
    batch_size: int = 2048
    optimizer: str = "sgd"
    lr: float = 1.6                  # 0.2 x B / 256
    momentum: float = 0.9
    weight_decay: float = 1e-6
    schedule: str = "cosine"
    warmup_epochs: float = 10.0
    augment: Any = "strong"
    expander_dim: int = 8192
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        for name in ("sim_coeff", "std_coeff", "cov_coeff"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class VICReg(Method):
    name: ClassVar[str] = "vicreg"
    Config: ClassVar[type] = VICRegConfig
    uses_labels: ClassVar[bool] = False
    presets: ClassVar[dict] = {
        "official": {},
        "small": dict(epochs=10, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=1e-4,
                      schedule="onecycle", warmup_epochs=0.0, expander_dim=1024),
    }

    def __init__(self, config: VICRegConfig, data: DataInfo):
        super().__init__(config, data)
        self.trunk = self.build_trunk()
        d = config.expander_dim
        self.expander = mlp(self.trunk.out_dim, d, d, 3, last_bias=False)

    def views(self, images, generator):
        return [self.augment(images, generator), self.augment(images, generator)]

    def training_step(self, batch: Batch) -> StepOutput:
        v1, v2 = batch.views
        z1, z2 = self.expander(self.trunk(v1)), self.expander(self.trunk(v2))
        # Under torchrun the batch statistics (cross-correlation / variance / covariance) are over the global
        # batch, as the official code's all-reduce / FullGatherLayer (identity on one process).
        z1, z2 = gather_batch(z1, z2)
        return StepOutput(vicreg_loss(z1, z2, self.config.sim_coeff, self.config.std_coeff, self.config.cov_coeff))

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.trunk(x), dim=1)
