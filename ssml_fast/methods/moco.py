"""MoCo v2 (Chen, Fan, Girshick, He, arXiv 2003.04297; official facebookresearch/moco, `--mlp --moco-t 0.2
--aug-plus --cos`): a query encoder trained by InfoNCE against a momentum key encoder and a queue of keys.

Per step: two views; q = normalize(head(trunk(v1))) from the query encoder, k = normalize(head_k(trunk_k(v2)))
from the key encoder (no gradient); logits = [q . k, q . queue^T] / T, cross entropy with the positive at
column 0 (`moco_infonce`). After the optimiser step the key encoder's parameters move by EMA (its BN
statistics are its own, from its own forward passes, as in the official code) and the batch's keys are
enqueued (`ssml_fast.memory.FeatureQueue`: FIFO; under DDP every rank enqueues all ranks' keys in rank
order, the official `concat_all_gather`). Retrieval uses the query encoder's pre-head features.

Official defaults (ImageNet): ResNet-50, 2-layer MLP head 2048 -> 2048 -> 128, queue 65,536, momentum
0.999, T 0.2, SGD lr 0.03 x B / 256 (B = 256), momentum 0.9, wd 1e-4, cosine, 200 epochs; the queue starts
as random unit vectors (`queue_init="random"`); the v2 head is Linear - ReLU - Linear without BN, as
the official `--mlp`. Deviations: there is no shuffle-BN (one device; under DDP each rank's BN sees its own batch); the official code enqueues inside
the forward, here after the optimiser step (same order of operations: the next step sees the keys).

"small" preset (28 x 28 MNIST-5k): 10 epochs, batch 128, Adam 1e-3 one-cycle, strong views, MLP head to 128, queue 1024
(~8 batches: with 17 steps per epoch a 65,536 queue would hold only random init vectors and 2-epoch-old
keys), momentum 0.99 (0.999 barely moves the key encoder in 170 steps), T 0.2. On the validation split
of the training classes (bench/select_presets.py's: train 0-2, validate 3-4; seed 0) queue 1024 and 4096
tie (MAP@R 0.7946 / 0.7945; untrained network 0.773), so the smaller queue is kept.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..memory import FeatureQueue
from ._ssl import ema_parameters_
from .base import Batch, DataInfo, Method, MethodConfig, StepOutput


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: mean over rows of -log softmax([q.k, q.queue^T] / T)[0].

    q, k (B, D) (the official code L2-normalises both), queue (K, D) negatives, K may be 0. The positive
    logit and the (B, K) GEMM against the queue are computed separately and the log-sum-exp taken over
    both, which is what `cross_entropy(cat([l_pos, l_neg]), zeros)` computes, without materialising the
    (B, 1 + K) concatenation.
    """
    if q.dim() != 2 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    if queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be (K, {q.shape[1]}), got {tuple(queue.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    l_pos = (q * k).sum(1, keepdim=True) / temperature
    l_neg = (q @ queue.t().to(q.dtype)) / temperature
    lse = torch.logsumexp(torch.cat([l_pos, torch.logsumexp(l_neg, 1, keepdim=True)], 1), 1) \
        if queue.shape[0] else l_pos[:, 0]
    return (lse - l_pos[:, 0]).mean()


@dataclass
class MoCoConfig(MethodConfig):
    epochs: int = 200
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.03                   # x B / 256 with B = 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    augment: Any = "strong"
    temperature: float = 0.2
    queue_size: int = 65536
    moco_momentum: float = 0.999       # key encoder EMA
    head: str = "mlp"                  # mlp (v2) | linear (v1)
    projection_dim: int = 128
    hidden_dim: Optional[int] = None   # MLP hidden width (default: the feature width, 2048 for ResNet-50)
    queue_init: str = "random"         # random (official: unit gaussian vectors) | empty

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ValueError(f"queue_size must be a positive int, got {self.queue_size!r}")
        if not 0.0 <= self.moco_momentum <= 1.0:
            raise ValueError(f"moco_momentum must be in [0, 1], got {self.moco_momentum}")
        if self.head not in ("mlp", "linear"):
            raise ValueError(f"head must be mlp or linear, got {self.head!r}")
        if self.queue_init not in ("random", "empty"):
            raise ValueError(f"queue_init must be random or empty, got {self.queue_init!r}")


class _Encoder(nn.Module):
    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x):
        return F.normalize(self.head(self.trunk(x)), dim=1)


class MoCo(Method):
    name: ClassVar[str] = "moco"
    Config: ClassVar[type] = MoCoConfig
    uses_labels: ClassVar[bool] = False
    presets: ClassVar[dict] = {
        "official": {},
        "small": dict(epochs=10, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=1e-4,
                      schedule="onecycle", queue_size=1024, moco_momentum=0.99, temperature=0.2),
    }

    def __init__(self, config: MoCoConfig, data: DataInfo):
        super().__init__(config, data)
        trunk = self.build_trunk()
        d, hidden = trunk.out_dim, config.hidden_dim or trunk.out_dim
        head = (nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, config.projection_dim))
                if config.head == "mlp" else nn.Linear(d, config.projection_dim))
        self.encoder = _Encoder(trunk, head)
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)  # official: starts as a copy
        self.queue = FeatureQueue(config.queue_size, config.projection_dim)
        if config.queue_init == "random":
            self.queue.enqueue(F.normalize(torch.randn(config.queue_size, config.projection_dim), dim=1))
        self._keys = None

    def views(self, images, generator):
        return [self.augment(images, generator), self.augment(images, generator)]

    def training_step(self, batch: Batch) -> StepOutput:
        v1, v2 = batch.views
        q = self.encoder(v1)
        with torch.no_grad():
            k = self.key_encoder(v2)
        # The ring's storage is read in place: the order of negatives does not change the loss.
        negatives = self.queue.view()[0]
        loss = moco_infonce(q, k, negatives, self.config.temperature)
        self._keys = k
        return StepOutput(loss, {"pos_sim": (q.detach() * k).sum(1).mean()})

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        ema_parameters_(self.key_encoder, self.encoder, self.config.moco_momentum)
        if self._keys is not None:
            self.queue.enqueue(self._keys)
        self._keys = None

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder.trunk(x), dim=1)
