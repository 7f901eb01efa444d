"""SimSiam (Chen & He, CVPR 2021; official facebookresearch/simsiam): two views, a predictor, stop-gradient,
no negatives and no EMA network.

Per step: z_i = projector(trunk(v_i)), p_i = predictor(z_i); loss = simsiam_loss(p1, z2) / 2 +
simsiam_loss(p2, z1) / 2 with simsiam_loss(p, z) = -mean cos(p, stopgrad(z)). Retrieval uses the trunk's
features.

Official defaults: projector 3 x (Linear - BN - ReLU) to 2048 with BN (no affine) on the output, predictor
Linear 2048 -> 512 - BN - ReLU - Linear 512 -> 2048, SGD lr 0.05 x B / 256 with B = 512 (lr 0.1), momentum
0.9, wd 1e-4, cosine, 100 epochs. Deviation: the official `--fix-pred-lr` (predictor at a constant lr) is
not used (it is an option of the official code, off by default in its ImageNet command).

"small" preset (28 x 28 MNIST-5k): 10 epochs, batch 128, Adam 1e-3 one-cycle, projector 512 (3 layers)
and predictor bottleneck 128 (the official 4 : 1 ratio), mild views: on the validation split of the
training classes (bench/select_presets.py's: train 0-2, validate 3-4; seed 0) mild views gave MAP@R 0.773
against 0.755 for the strong ones (one seed, about the seed spread; untrained network 0.773).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ._ssl import mlp
from .base import Batch, DataInfo, Method, MethodConfig, StepOutput


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-mean over rows of cos(p, z), z detached here (the stop-gradient is the method)."""
    if p.dim() != 2 or p.shape != z.shape:
        raise ValueError(f"p and z must both be (B, D), got {tuple(p.shape)} and {tuple(z.shape)}")
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


@dataclass
class SimSiamConfig(MethodConfig):
    epochs: int = 100
    batch_size: int = 512
    optimizer: str = "sgd"
    lr: float = 0.1                 # 0.05 x B / 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    augment: Any = "strong"
    projection_dim: int = 2048      # projector width and output
    predictor_dim: int = 512        # predictor bottleneck


class SimSiam(Method):
    name: ClassVar[str] = "simsiam"
    Config: ClassVar[type] = SimSiamConfig
    uses_labels: ClassVar[bool] = False
    presets: ClassVar[dict] = {
        "official": {},
        "small": dict(epochs=10, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=1e-4,
                      schedule="onecycle", augment="mild", projection_dim=512, predictor_dim=128),
    }

    def __init__(self, config: SimSiamConfig, data: DataInfo):
        super().__init__(config, data)
        self.trunk = self.build_trunk()
        d = config.projection_dim
        self.projector = mlp(self.trunk.out_dim, d, d, 3, last_bn=True, last_bn_affine=False)
        self.predictor = mlp(d, config.predictor_dim, d, 2)

    def views(self, images, generator):
        return [self.augment(images, generator), self.augment(images, generator)]

    def training_step(self, batch: Batch) -> StepOutput:
        v1, v2 = batch.views
        # One forward per view, as the official code: BN statistics are per view.
        z1, z2 = self.projector(self.trunk(v1)), self.projector(self.trunk(v2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * simsiam_loss(p1, z2) + 0.5 * simsiam_loss(p2, z1)
        # Collapse monitor of the paper (Fig. 2): per-dimension std of the normalised output, 1/sqrt(d) if healthy.
        std = F.normalize(z1.detach(), dim=1).std(0).mean()
        return StepOutput(loss, {"z_std": std})

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.trunk(x), dim=1)
