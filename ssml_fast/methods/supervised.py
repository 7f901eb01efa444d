"""Supervised metric learning: any loss of `ssml_fast.losses` on class labels, P x K or random batches.

The default (batch-all triplet, margin 0.2, on the L2-normalised features of a headless CNN) is the
setting that generalised to unseen classes on MNIST-5k: a linear embedding head trained on five classes
collapsed onto them (the batch-all loss reaches 0 and stops learning), so `head` defaults to "identity".
There is no single official code for this baseline; the defaults are the small-image recipe.

Losses with learnable parameters (the proxy / classification family: proxies, class weights, centres)
train them in their own optimiser group "loss" at `loss_lr` (None: head_lr if set, else the optimiser's
lr); PML users train proxies at a higher learning rate than the network. `supervised:<loss>` (e.g. `supervised:arcface` in
`ssml-fast compare --methods`) is this method with `loss=<loss>` and that loss's default arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..distributed import gather_batch, gathered
from ._components import SPEC_LOSS_KWARGS, build_loss, build_miner, loss_class
from .base import Batch, DataInfo, Method, MethodConfig, Stage, StepOutput


@dataclass
class SupervisedConfig(MethodConfig):
    loss: str = "triplet"                      # a name of methods._components.LOSSES or a loss class name
    loss_kwargs: dict = field(default_factory=lambda: {"margin": 0.2, "mining": "all"})
    loss_lr: Optional[float] = None            # lr of the loss's own parameters (proxies); None: head_lr / lr
    miner: Optional[str] = None                # e.g. multi_similarity, batch_hard
    miner_kwargs: dict = field(default_factory=dict)
    sampler: str = "random"                    # random | m_per_class (P x K)
    samples_per_class: int = 4                 # K of P x K batches
    head: str = "identity"                     # identity | linear | mlp
    embedding_dim: int = 128                   # head output (ignored by the identity head)
    normalize: bool = True                     # L2-normalise the embedding

    @staticmethod
    def defaults_when_set(key: str, value) -> dict:
        """Setting `loss` (or `miner`) alone also resets its kwargs to that loss's (miner's) defaults: a triplet
        margin means nothing to ArcFace (config.apply_overrides calls this)."""
        if key == "loss" and isinstance(value, str):
            return {"loss_kwargs": dict(SPEC_LOSS_KWARGS.get(value, {}))}
        if key == "miner":
            return {"miner_kwargs": {}}
        return {}

    def __post_init__(self):
        super().__post_init__()
        if self.loss_lr is not None and not self.loss_lr > 0:
            raise ValueError(f"loss_lr must be > 0, got {self.loss_lr}")
        if self.sampler not in ("random", "m_per_class"):
            raise ValueError(f"sampler must be 'random' or 'm_per_class', got {self.sampler!r}")
        if self.sampler == "m_per_class" and self.batch_size % self.samples_per_class:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of "
                             f"samples_per_class={self.samples_per_class} for m_per_class batches")


class Supervised(Method):
    name: ClassVar[str] = "supervised"
    Config: ClassVar[type] = SupervisedConfig
    uses_labels: ClassVar[bool] = True
    # "small": lr 2e-3 won the validation-split selection (bench/results_presets.md: train classes 0-2,
    # validate on 3-4; +0.027 MAP@R over lr 1e-3, more than the seed spread of 0.020).
    presets: ClassVar[dict] = {"official": {}, "small": {"lr": 2e-3}}

    def __init__(self, config: SupervisedConfig, data: DataInfo):
        super().__init__(config, data)
        self.trunk = self.build_trunk()
        self.head = self.build_head(config.head, self.trunk.out_dim, config.embedding_dim)
        classes = torch.as_tensor(sorted(data.train_classes), dtype=torch.long)
        self.register_buffer("classes", classes, persistent=False)  # label -> 0..C-1 for proxy losses
        self.loss_fn = build_loss(config.loss, config.loss_kwargs, num_classes=len(classes),
                                  embedding_size=self.head.out_dim)
        self.miner = build_miner(config.miner, config.miner_kwargs)
        per_batch = config.batch_size // config.samples_per_class
        if config.sampler == "m_per_class" and per_batch > len(classes):
            raise ValueError(f"batch_size={config.batch_size} with samples_per_class={config.samples_per_class} "
                             f"needs {per_batch} classes per batch, but training has {len(classes)}; raise "
                             "samples_per_class or use sampler=random")

    @classmethod
    def spec_overrides(cls, loss: str, spec: str) -> dict:
        """The config overrides of the method spec `supervised:<loss>`: that loss with its default arguments
        (SPEC_LOSS_KWARGS where the supervised method has its own, e.g. triplet's margin 0.2 batch-all)."""
        try:
            loss_class(loss)
        except ValueError as e:
            raise ConfigError(f"method spec {spec!r}: {e}") from None
        return {"loss": loss, "loss_kwargs": dict(SPEC_LOSS_KWARGS.get(loss, {}))}

    def parameter_groups(self) -> list[dict]:
        """The base groups, with the loss's own parameters (proxies, class weights, centres) taken out into
        a group "loss" at `loss_lr` (None: head_lr when set, else the optimiser's lr)."""
        own = [p for p in self.loss_fn.parameters() if p.requires_grad]
        groups = super().parameter_groups()
        if not own:
            return groups
        ids = {id(p) for p in own}
        for g in groups:
            g["params"] = [p for p in g["params"] if id(p) not in ids]
        loss_group = {"params": own, "name": "loss"}
        lr = self.config.loss_lr if self.config.loss_lr is not None else self.config.head_lr
        if lr is not None:
            loss_group["lr"] = lr
        return [g for g in groups if g["params"]] + [loss_group]

    def batch_sampler(self, stage: Stage, ctx):
        if self.config.sampler == "random":
            return super().batch_sampler(stage, ctx)
        from ..samplers import MPerClassSampler

        return MPerClassSampler(ctx.train_labels.cpu(), m=self.config.samples_per_class,
                                batch_size=self.config.batch_size, seed=ctx.seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.trunk(x))
        return F.normalize(z, dim=1) if self.config.normalize else z

    def training_step(self, batch: Batch) -> StepOutput:
        (x,) = batch.views
        labels = torch.searchsorted(self.classes, batch.labels)
        emb = self(x)
        # Under torchrun the miner and the loss see every rank's rows in rank order, with gradient: the loss of
        # the global batch (identity on one process; ssml_fast.distributed explains the exact gradient).
        emb, labels = gather_batch(emb, labels)
        with gathered():
            indices = self.miner(emb, labels) if self.miner is not None else None
            loss = self.loss_fn(emb, labels, indices)
        logs = {}
        for name in ("num_active", "num_triplets"):
            v = getattr(self.loss_fn, name, None)
            if v is not None:
                logs[name.replace("num_", "")] = v
        return StepOutput(loss, logs)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)
