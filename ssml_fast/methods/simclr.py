"""SimCLR (Chen et al., ICML 2020): NT-Xent between two augmented views, through a projection head.

The reference self-supervised method of the blog post and thesis 2.4. Two random views of each image go
through the network and a projection head; `ssml_fast.losses.NTXentLoss` (labels = image index, so each
row's positive is its other view and the other 2B - 2 rows are its negatives) is minimised on the
projections, and retrieval uses the features *before* the head, as in the paper.

Official defaults (paper, ImageNet): 2-layer MLP head to 128-d, temperature 0.1, cosine schedule with 10
warm-up epochs, weight decay 1e-6, batch 4096, LARS at lr 0.3 x B / 256. LARS is not part of torch; the
official preset uses SGD with momentum at the same learning rate rule for batch 256, which is what
small-batch SimCLR reproductions do. The "small" preset is the MNIST-5k recipe: strong views, T = 0.2,
a linear 128-d head, Adam + one-cycle, 10 epochs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F

from ..distributed import gather_batch
from ..losses import NTXentLoss
from .base import Batch, DataInfo, Method, MethodConfig, StepOutput


@dataclass
class SimCLRConfig(MethodConfig):
    epochs: int = 100
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.3
    momentum: float = 0.9
    weight_decay: float = 1e-6
    schedule: str = "cosine"
    warmup_epochs: float = 10.0
    augment: Any = "strong"
    temperature: float = 0.1
    head: str = "mlp"                  # projection head: mlp | linear
    projection_dim: int = 128
    hidden_dim: Optional[int] = None   # MLP hidden width (default: the feature width)

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class SimCLR(Method):
    name: ClassVar[str] = "simclr"
    Config: ClassVar[type] = SimCLRConfig
    uses_labels: ClassVar[bool] = False
    presets: ClassVar[dict] = {
        "official": {},
        "small": dict(epochs=10, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=1e-4,
                      schedule="onecycle", warmup_epochs=0.0, temperature=0.2, head="linear"),
    }

    def __init__(self, config: SimCLRConfig, data: DataInfo):
        super().__init__(config, data)
        self.trunk = self.build_trunk()
        kw = {"hidden": config.hidden_dim} if config.head == "mlp" else {}
        self.head = self.build_head(config.head, self.trunk.out_dim, config.projection_dim, **kw)
        self.loss_fn = NTXentLoss(temperature=config.temperature)

    def views(self, images, generator):
        return [self.augment(images, generator), self.augment(images, generator)]

    def training_step(self, batch: Batch) -> StepOutput:
        v1, v2 = batch.views
        b = v1.shape[0]
        z = self.head(self.trunk(torch.cat([v1, v2])))
        # Dataset indices pair the two views (unique in a batch, and across ranks under torchrun, where the
        # loss sees every rank's rows: gather_batch, identity on one process).
        ids = batch.index.to(z.device).repeat(2)
        zn = F.normalize(z.detach(), dim=1)
        loss = self.loss_fn(*gather_batch(z, ids))
        return StepOutput(loss, {"pos_sim": (zn[:b] * zn[b:]).sum(1).mean()})

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.trunk(x), dim=1)
