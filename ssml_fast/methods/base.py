"""The interface between a training method and the trainer.

A method is an `nn.Module` that owns everything it trains or keeps (networks, heads, teachers, memory
banks, queues), so `state_dict()` checkpoints all of it. The trainer (`ssml_fast.train`) knows only the
hooks below, in this order:

    for stage in method.stages():                       # one stage unless the method has cycles (InsCLR)
        method.begin_stage(stage, ctx)                  # e.g. build candidate pools from ctx.embed_train()
        sampler = method.batch_sampler(stage, ctx)      # lists of dataset indices; len() = steps per epoch
        for epoch in stage:
            method.on_epoch_start(epoch, sampler, ctx)  # e.g. re-embed the training set, rebuild NN batches
            for indices in sampler:
                batch = Batch(method.views(images[indices], generator), labels or None, indices)
                out = method.training_step(batch)       # StepOutput(loss, logs)
                out.loss.backward()
                method.after_backward()                 # STML's EMA teacher update runs here
                optimizer.step()
                method.after_step(batch, out)           # bank / queue updates
            method.on_epoch_end(epoch, ctx)
    method.embed(x)                                     # the evaluation embedding

File-backed datasets (CUB, Cars196, SOP, ..., `ssml_fast.data.files`) do not go through `views()`: their
images are decoded and augmented in DataLoader workers, and a step gets the views `view_specs(stage)`
names, one view per entry, each a preset of `ssml_fast.data.transforms` (e.g. "dml", "simclr",
"dino_local"; the run's "thesis" pipeline swaps the augmented ones for the thesis's crop). The default
derives them from the method itself: as many views as `views()` returns on a probe batch, each "simclr"
when the config's `augment` is "strong" (the SSL methods' colour-distorted views) and "dml" otherwise
(RandomResizedCrop(scale 0.16-1) + flip, STML's). Methods whose views differ in kind override it
(Spreading's unaugmented anchor, DINO's local crops, InsCLR's per-stage views). The bundled in-memory
datasets keep the batched GPU `views()` path.

Each method has a config dataclass (`Config`) whose defaults are the official code's (METHODS.md), and
presets (e.g. "small" for the bundled 28 x 28 data). The optimisation fields every method shares live in
`MethodConfig`, so the trainer reads them without knowing the method.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Optional, Protocol

import torch
from torch import nn

from ..models import build_trunk, make_head


@dataclass
class MethodConfig:
    """Fields shared by every method: network, optimisation and schedule. Methods subclass it."""

    backbone: str = "small_cnn"       # ssml_fast.models.available_trunks(): small_cnn, resnet18/50/101, googlenet, timm:<name>
    # Backbone options (ssml_fast.models; README "Backbones"). pretrained: none | imagenet | imagenet_v2;
    # None = the backbone's default: "imagenet" for torchvision / timm (a missing local file is an error
    # that says where to put it), "none" for the small CNNs. weights: a local state-dict file instead of the
    # torch / timm cache (normalised as the ImageNet weights). pool: None = the backbone's default (flatten
    # for the small CNNs, gap for the others); methods with their own `pool` field override it.
    pretrained: Optional[str] = None
    weights: Optional[str] = None
    pool: Optional[str] = None
    gem_p: float = 3.0               # GeM pooling's initial p (learnable in the trunk)
    freeze_stages: int = 0           # freeze the first N stages of the backbone (their BN in eval mode)
    bn_freeze: bool = False          # every backbone BN in eval mode, affine frozen (STML's bn_freeze)
    channels_last: Optional[bool] = None  # None = the backbone's default
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"          # sgd | adam | adamw | adamp
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9            # SGD momentum (and AdamP's nesterov momentum flag source)
    nesterov: bool = False
    head_lr: Optional[float] = None  # learning rate of the heads if different from lr (STML's --emb-lr)
    schedule: str = "onecycle"       # constant | cosine | onecycle | multistep
    milestones: tuple[int, ...] = ()  # multistep: epochs at which lr is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0       # linear warm-up (cosine / constant / multistep)
    grad_clip: Optional[float] = None  # max global gradient norm
    augment: Any = "mild"            # preset name of ssml_fast.data.augment or a dict of BatchAugment kwargs

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.head_lr is not None and not self.head_lr > 0:
            raise ValueError(f"head_lr must be > 0, got {self.head_lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if any(m < 0 for m in self.milestones):
            raise ValueError(f"milestones must be >= 0, got {self.milestones}")
        from ..models import PRETRAINED, is_known_trunk, available_trunks

        if not is_known_trunk(self.backbone):
            raise ValueError(f"backbone {self.backbone!r} is unknown; available: {', '.join(available_trunks())}")
        if self.pretrained is not None and self.pretrained not in PRETRAINED:
            raise ValueError(f"pretrained must be one of {', '.join(PRETRAINED)}, got {self.pretrained!r}")
        if self.weights is not None and self.pretrained == "none":
            raise ValueError("weights: a weight file was given with pretrained='none'; drop one of them")
        if self.freeze_stages < 0:
            raise ValueError(f"freeze_stages must be >= 0, got {self.freeze_stages}")
        if not self.gem_p > 0:
            raise ValueError(f"gem_p must be > 0, got {self.gem_p}")


@dataclass
class Batch:
    views: list            # the method's views, each (B, C, H, W) on the training device
    labels: Optional[torch.Tensor]  # (B,) class labels; None for self-supervised methods
    index: torch.Tensor    # (B,) dataset indices: STML ids, InsCLR pseudo-labels, bank slots


@dataclass
class StepOutput:
    loss: torch.Tensor                     # 0-d, the quantity to minimise
    logs: dict = field(default_factory=dict)  # name -> 0-d tensor or float, averaged per epoch


@dataclass
class Stage:
    """A block of epochs with its own batches / pools (InsCLR's cycles). Most methods have one."""

    name: str
    epochs: int
    options: dict = field(default_factory=dict)


@dataclass
class DataInfo:
    """What a method may know about its data when it is built (no test data)."""

    image_shape: tuple        # (C, H, W)
    mean: float
    std: float
    num_train: int            # training images (memory bank size)
    train_classes: tuple      # the training class labels (proxy losses); self-supervised methods ignore them


class TrainContext(Protocol):
    """What the trainer gives the hooks (ssml_fast.train.loop implements it)."""

    device: torch.device
    seed: int
    epoch: int
    train_labels: torch.Tensor   # (N_train,) class labels, for class-balanced samplers of supervised methods

    def embed_train(self, fn=None, batch_size: int = 512) -> torch.Tensor:
        """(N_train, D) embeddings of the non-augmented training images, by `fn` (default method.embed),
        in eval mode, without gradient."""

    def generator(self, purpose: str) -> torch.Generator:
        """A CPU generator seeded from (seed, stage, epoch, purpose): restartable randomness."""


class Method(nn.Module):
    """Base class; see the module docstring for the call order. Subclasses set `name`, `Config`,
    `uses_labels`, and implement `training_step` and `embed`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = MethodConfig
    uses_labels: ClassVar[bool] = False
    eval_metric: ClassVar[str] = "cosine"   # how retrieval compares embeddings

    def __init__(self, config: MethodConfig, data: DataInfo):
        super().__init__()
        self.config = config
        self.data = data
        if config.batch_size > data.num_train:
            raise ValueError(f"batch_size={config.batch_size} is larger than the {data.num_train} training images")
        from ..data.augment import make_augment  # data sits beside methods: views are the method's choice

        self.augment = make_augment(config.augment)

    # --- building blocks shared by the methods ------------------------------------------------------
    def build_trunk(self, **kwargs) -> nn.Module:
        """The config's backbone for this data, with the config's backbone options (pretrained, weights,
        pool, gem_p, freeze_stages, bn_freeze, channels_last; unset ones take the backbone's default);
        kwargs override them (e.g. pool="gap+gmp"). Called twice (STML's independent teacher), it reads
        the pretrained weights twice: both networks start from them, as the official code."""
        c = self.config
        opts = {k: getattr(c, k, None) for k in ("pretrained", "weights", "pool", "freeze_stages", "bn_freeze",
                                                   "channels_last")}
        if (kwargs.get("pool") or opts["pool"]) == "gem":
            opts["gem_p"] = c.gem_p
        opts = {k: v for k, v in opts.items() if v is not None}
        opts.update(kwargs)
        return build_trunk(c.backbone, self.data.image_shape, mean=self.data.mean, std=self.data.std, **opts)

    @staticmethod
    def build_head(kind: str, in_dim: int, out_dim: int, **kw) -> nn.Module:
        return make_head(kind, in_dim, out_dim, **kw)

    # --- hooks (defaults do nothing) -----------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """Optimiser parameter groups; a group may carry its own "lr". Default: every parameter that
        requires a gradient (frozen stages are left out), with everything outside the backbone trunks
        (heads, projectors, predictors, proxies: whatever is not in a module built by `build_trunk`) at
        `head_lr` when it is set: the transfer recipe's separate head learning rate."""
        trunk = {id(p) for m in self.modules() if getattr(m, "is_trunk", False) for p in m.parameters()}
        heads, rest = [], []
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (heads if id(p) not in trunk and self.config.head_lr is not None else rest).append(p)
        groups = [{"params": rest, "name": "network"}]
        if heads:
            groups.append({"params": heads, "lr": self.config.head_lr, "name": "heads"})
        return groups

    def stages(self) -> list[Stage]:
        return [Stage("train", self.config.epochs)]

    def begin_stage(self, stage: Stage, ctx: TrainContext) -> None:
        pass

    def batch_sampler(self, stage: Stage, ctx: TrainContext) -> Iterable:
        """Batches of dataset indices for the stage. It must support len() (steps per epoch) and may have
        set_epoch(epoch); the default is shuffled batches of `batch_size`, last partial batch dropped."""
        from ..samplers import RandomBatchSampler

        return RandomBatchSampler(self.data.num_train, self.config.batch_size, seed=ctx.seed)

    def on_epoch_start(self, epoch: int, sampler, ctx: TrainContext) -> None:
        pass

    def views(self, images: torch.Tensor, generator: torch.Generator) -> list:
        """The inputs of one step; default: one augmented view."""
        return [self.augment(images, generator)]

    def view_specs(self, stage: Optional[Stage] = None) -> list:
        """Preset names (ssml_fast.data.transforms) of the views of one step on file-backed data; see the
        module docstring. Default: `views()`'s count of "simclr" (augment "strong") or "dml" views."""
        c, h, w = self.data.image_shape
        with torch.no_grad():
            n = len(self.views(torch.zeros(2, c, min(h, 32), min(w, 32)), torch.Generator().manual_seed(0)))
        return ["simclr" if self.config.augment == "strong" else "dml"] * n

    def training_step(self, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def after_backward(self) -> None:
        pass

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        pass

    def on_epoch_end(self, epoch: int, ctx: TrainContext) -> None:
        pass

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"method={self.name!r}"


def config_summary(config) -> dict:
    return dataclasses.asdict(config)
