"""STML: Self-Taught Metric Learning without labels (Kim et al., CVPR 2022; thesis 3.3, Algorithm 2).

Per step (thesis Algorithm 2, official `code/main.py`):
  1. a batch of q query images and their K - 1 nearest neighbours (by the student's g embedding of the
     non-augmented training set, rebuilt every epoch; the image itself first), two augmented views each:
     N = 2 q K embeddings, ids = dataset index (both views share it);
  2. the teacher (g head only, eval mode, no gradient) embeds the views; the contextual similarity of its
     L2-normalised embeddings (k = K x views neighbours, sigma) gives soft targets w;
  3. the student embeds the same views with two heads, f (evaluation) and g (training only);
  4. loss = 1/2 (RC(f) + RC(g)) + KL(P^g || P^f)   (ssml_fast.losses.STMLLoss);
  5. backward; the teacher <- EMA of the student (parameters and BN buffers) *before* the optimiser step
     (the official order: the teacher tracks the pre-step student); optimiser step.

Official defaults (METHODS.md 1): GAP + GMP pooling, f 128-d (the paper's headline G^128; argparse 512),
g 1024-d, orthogonal heads, no L2 normalisation of the student, 120 images = 24 queries x 5 (two views:
240 embeddings), sigma 3, delta 1, EMA 0.999, AdamP (nesterov, wd 1e-2, lr 1e-4 for backbone and heads),
cosine over 90 epochs, evaluation of the raw f by euclidean distance. Teacher initialisation as the
official code: an independently initialised network of the same architecture (`teacher_init="independent"`;
the official ImageNet backbone is shared but each g head is drawn separately); "copy" starts it as a copy
of the student. The schedule steps per iteration (the official code steps per epoch; same endpoints).

The "small" preset for 28 x 28 digits follows SMALL_IMAGE_RECIPES.md ("STML, adapted"): the teacher starts
as a copy, EMA 0.99 (0.999 is too slow for a few hundred steps), f and g L2-normalised, f 256 / g 512 on
the flattened CNN features, mild views, AdamW lr 1e-3 wd 1e-2, 16 epochs; it evaluates the teacher's g
(chosen on a validation split of the training classes, bench/results_presets.md).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_batch
from ..losses.stml_loss import FORMS, STMLLoss
from ..nn import ema_update_
from .base import Batch, DataInfo, Method, MethodConfig, Stage, StepOutput

EVAL_EMBEDDINGS = ("student_f", "student_g", "teacher_g")


@dataclass
class STMLConfig(MethodConfig):
    epochs: int = 90
    batch_size: int = 120             # images per step (queries x neighbours_per_query); x views embeddings
    optimizer: str = "adamp"
    lr: float = 1e-4
    head_lr: Any = 1e-4               # --emb-lr
    weight_decay: float = 1e-2
    schedule: str = "cosine"
    # RandomResizedCrop(scale=(0.16, 1)) + horizontal flip: a crop of 16-100 % of the area is an
    # enlargement of 1 to 2.5 times.
    augment: Any = field(default_factory=lambda: {"scale": (1.0, 2.5), "shift": 0.2, "hflip": True})
    pool: str = "gap+gmp"
    embedding_dim: int = 128          # f
    g_dim: int = 1024                 # g
    normalize: bool = False           # L2-normalise student f and g (official: no)
    neighbours_per_query: int = 5     # K, the image itself included
    views: int = 2
    sigma: float = 3.0
    delta: float = 1.0
    temperature: float = 1.0
    loss_form: str = "code"           # code | thesis (see STMLLoss)
    momentum_ema: float = 0.999
    teacher_init: str = "independent"  # independent | copy
    eval_embedding: str = "student_f"  # student_f | student_g | teacher_g

    def __post_init__(self):
        super().__post_init__()
        checks = [
            (self.neighbours_per_query >= 1, f"neighbours_per_query must be >= 1, got {self.neighbours_per_query}"),
            (self.views >= 1, f"views must be >= 1, got {self.views}"),
            (self.batch_size % self.neighbours_per_query == 0,
             f"batch_size={self.batch_size} must be a multiple of neighbours_per_query={self.neighbours_per_query}"),
            (self.sigma > 0, f"sigma must be > 0, got {self.sigma}"),
            (self.delta >= 0, f"delta must be >= 0, got {self.delta}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (0 <= self.momentum_ema <= 1, f"momentum_ema must be in [0, 1], got {self.momentum_ema}"),
            (self.teacher_init in ("independent", "copy"), f"teacher_init must be independent or copy, got {self.teacher_init!r}"),
            (self.eval_embedding in EVAL_EMBEDDINGS, f"eval_embedding must be one of {EVAL_EMBEDDINGS}, got {self.eval_embedding!r}"),
            (self.loss_form in FORMS, f"loss_form must be one of {FORMS}, got {self.loss_form!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class _Teacher(nn.Module):
    """The teacher network: trunk + g head, never trained by gradient, always in eval mode."""

    def __init__(self, trunk: nn.Module, head_g: nn.Module):
        super().__init__()
        self.trunk, self.head_g = trunk, head_g
        self.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # BN uses its running statistics, as in the official code

    def forward(self, x):
        return self.head_g(self.trunk(x))


class STML(Method):
    name: ClassVar[str] = "stml"
    Config: ClassVar[type] = STMLConfig
    uses_labels: ClassVar[bool] = False
    presets: ClassVar[dict] = {
        "official": {},
        "small": dict(epochs=16, batch_size=120, optimizer="adamw", lr=1e-3, head_lr=None, weight_decay=1e-2,
                      schedule="cosine", augment="mild", pool="flatten", embedding_dim=256, g_dim=512,
                      normalize=True, momentum_ema=0.99, teacher_init="copy",
                      # Evaluating the teacher's g won the validation-split selection (bench/results_presets.md:
                      # +0.036 MAP@R over the student f on held-out training classes, seed spread 0.005).
                      eval_embedding="teacher_g"),
    }

    def __init__(self, config: STMLConfig, data: DataInfo):
        super().__init__(config, data)
        self.eval_metric = "cosine" if config.normalize else "euclidean"
        k = config.neighbours_per_query * config.views
        if k > config.batch_size * config.views:
            raise ValueError(f"k = neighbours_per_query x views = {k} exceeds the {config.batch_size * config.views} "
                             "embeddings of a batch")
        if config.neighbours_per_query > data.num_train:
            raise ValueError(f"neighbours_per_query={config.neighbours_per_query} exceeds the {data.num_train} "
                             "training images")
        self.trunk = self.build_trunk(pool=config.pool)
        self.head_f = self.build_head("linear", self.trunk.out_dim, config.embedding_dim, init="orthogonal")
        self.head_g = self.build_head("linear", self.trunk.out_dim, config.g_dim, init="orthogonal")
        if config.teacher_init == "copy":
            self.teacher = _Teacher(copy.deepcopy(self.trunk), copy.deepcopy(self.head_g))
        else:
            self.teacher = _Teacher(self.build_trunk(pool=config.pool),
                                    self.build_head("linear", self.trunk.out_dim, config.g_dim, init="orthogonal"))
        self.loss_fn = STMLLoss(sigma=config.sigma, k=k, delta=config.delta, temperature=config.temperature,
                                form=config.loss_form)
        # The epoch's neighbour table is state: a run resumed mid-epoch replays the same batches.
        self.register_buffer("neighbours", torch.zeros(data.num_train, config.neighbours_per_query - 1,
                                                       dtype=torch.long))

    # ---- batches: q queries x K neighbours, rebuilt every epoch ------------------------------------
    def batch_sampler(self, stage: Stage, ctx):
        from ..samplers import NearestNeighborBatchSampler

        K = self.config.neighbours_per_query
        return NearestNeighborBatchSampler(self.data.num_train, self.config.batch_size // K, K - 1,
                                           metric="euclidean", seed=ctx.seed)

    def on_epoch_start(self, epoch, sampler, ctx) -> None:
        if getattr(ctx, "resume_step", 0) > 0:  # mid-epoch resume: the table saved with the checkpoint
            sampler.neighbours = self.neighbours.cpu().clone()
            return
        if self.config.neighbours_per_query == 1:
            sampler.neighbours = torch.zeros(self.data.num_train, 0, dtype=torch.long)
        else:
            # Official: the student's g (unnormalised) of the non-augmented images, squared euclidean.
            sampler.set_embeddings(ctx.embed_train(self._student_g))
        self.neighbours.copy_(sampler.neighbours.to(self.neighbours.device))

    # ---- the step ------------------------------------------------------------------------------
    def views(self, images, generator):
        return [self.augment(images, generator) for _ in range(self.config.views)]

    def _student(self, x):
        feat = self.trunk(x)
        f, g = self.head_f(feat), self.head_g(feat)
        if self.config.normalize:
            f, g = F.normalize(f, dim=1), F.normalize(g, dim=1)
        return f, g

    def _student_g(self, x):
        return self._student(x)[1]

    def training_step(self, batch: Batch) -> StepOutput:
        x = torch.cat(batch.views)
        ids = batch.index.repeat(len(batch.views))
        with torch.no_grad():
            t = self.teacher(x)
        f, g = self._student(x)
        # Under torchrun the contextual similarity and the loss see every rank's views (rank order, with
        # gradient): the single-process loss of the global batch (identity on one process).
        f, g, t, ids = gather_batch(f, g, t, ids)
        loss = self.loss_fn(f, g, t, ids)
        p = self.loss_fn.parts
        return StepOutput(loss, {"rc_f": p.rc_f, "rc_g": p.rc_g, "kl": p.kl})

    def after_backward(self) -> None:
        ema_update_(self.teacher, self, self.config.momentum_ema)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        which = self.config.eval_embedding
        if which == "teacher_g":
            return F.normalize(self.teacher(x), dim=1) if self.config.normalize else self.teacher(x)
        f, g = self._student(x)
        return f if which == "student_f" else g
