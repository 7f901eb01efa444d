"""Spreading: invariant and spreading instance features (Ye et al., CVPR 2019; thesis 3.1, eqs 3.1-3.5).

Each image x_i gives two L2-normalised 128-d features, f_i (the image) and f^_i (its augmentation). Each
instance is its own class: the loss (ssml_fast.losses.SpreadingLoss, exact to the official
BatchAverage criterion) pulls f^_i towards f_i and pushes every other feature of the batch away, with
temperature 0.1, the gradient flowing through the anchor rows only (the official code's detach), and
negatives from the batch itself (no memory bank).

Official defaults (METHODS.md 3.3, `demo_unseen.py`): 128-d linear head after the backbone's pool,
L2-normalised and evaluated; batch 64 images; SGD lr 1e-3, momentum 0.9, weight decay 5e-4; lr x0.1 at
epochs 20 and 40, 60 epochs. The official data pipeline random-crops and flips *both* views; on 28 x 28
digits that hurt (SMALL_IMAGE_RECIPES.md), so `augment_anchor` chooses: the "small" preset keeps the
anchor view unaugmented ("one augmented view per image"), `augment_anchor=True` gives the official form.
CUB's 50 % nearest-neighbour positive of the official code is not reproduced (it is CUB-only there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..distributed import gather_batch
from ..losses import SpreadingLoss
from .base import Batch, DataInfo, Method, MethodConfig, StepOutput


@dataclass
class SpreadingConfig(MethodConfig):
    epochs: int = 60
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    milestones: tuple[int, ...] = (20, 40)
    gamma: float = 0.1
    # The official RandomCrop(227 of 256) + horizontal flip: a shift of up to 6 % of the side, flips.
    augment: Any = field(default_factory=lambda: {"shift": 0.06, "hflip": True})
    temperature: float = 0.1
    embedding_dim: int = 128
    head: str = "linear"
    augment_anchor: bool = True   # official: both views augmented

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class Spreading(Method):
    name: ClassVar[str] = "spreading"
    Config: ClassVar[type] = SpreadingConfig
    uses_labels: ClassVar[bool] = False
    presets: ClassVar[dict] = {
        "official": {},
        # Chosen on MNIST-5k (SMALL_IMAGE_RECIPES.md): mild views, unaugmented anchor, Adam + one-cycle.
        "small": dict(epochs=10, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=1e-4,
                      schedule="onecycle", milestones=(), augment="mild", augment_anchor=False),
    }

    def __init__(self, config: SpreadingConfig, data: DataInfo):
        super().__init__(config, data)
        self.trunk = self.build_trunk()
        self.head = self.build_head(config.head, self.trunk.out_dim, config.embedding_dim)
        self.loss_fn = SpreadingLoss(temperature=config.temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.trunk(x)), dim=1)

    def views(self, images, generator):
        first = self.augment(images, generator) if self.config.augment_anchor else images
        return [first, self.augment(images, generator)]

    def view_specs(self, stage=None) -> list:
        # The official pre-resized 256 x 256 images, RandomCrop + flip (unaugmented anchor: centre crop).
        return ["spreading" if self.config.augment_anchor else "spreading_center", "spreading"]

    def training_step(self, batch: Batch) -> StepOutput:
        x, x_aug = batch.views
        f = self(torch.cat([x, x_aug]))  # one forward: BN statistics over both views, as the official code
        b = x.shape[0]
        # Under torchrun the loss sees every rank's pairs (rank order, with gradient): every other image of
        # the global batch is a negative, as in one process (identity on one process).
        a, p = gather_batch(f[:b], f[b:])
        loss = self.loss_fn(a, p)
        return StepOutput(loss, {"pos_sim": (a * p).sum(1).mean().detach()})

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)
