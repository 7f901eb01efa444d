"""DINO, self-distillation with no labels (Caron et al., ICCV 2021; official facebookresearch/dino).

Per step (`main_dino.py`, `DINOLoss`): views = 2 global crops + N local crops at a smaller size; the
teacher (EMA of the student, no gradient) sees the global crops only, the student every crop. Both end in
the DINO head: an MLP to a bottleneck, L2 normalisation, and a weight-normalised linear layer to
`out_dim` logits (g fixed at 1, the official `norm_last_layer=True`). With teacher probabilities
q = softmax((t - c) / tau_t) (centering by c, sharpening by tau_t) and student log-probabilities
log softmax(s / tau_s), the loss is the mean over pairs (teacher global crop i, student crop v), v != i,
of the batch-mean cross entropy -sum q_i log p_v (`dino_loss`). After the optimiser step: the teacher's
parameters move by EMA (momentum cosine from 0.996 to 1 over the run), and the centre follows the teacher
outputs of the step: c <- m c + (1 - m) mean_rows(t) (m = 0.9). tau_t warms up linearly over the first
epochs, per epoch as the official schedule. Retrieval uses the teacher's trunk (the official k-NN
evaluation uses the teacher backbone).

Official defaults: out_dim 65,536, head hidden 2048, bottleneck 256, 3 layers (GELU), 2 global crops
(area 40-100 % at 224) + 8 local (5-40 % at 96), teacher temperature 0.04 -> 0.07 over 30 epochs (the
paper's recommended warm-up; main_dino.py's own defaults are 0.04 without warm-up, the README's "boosted"
run uses 0.07 / 30), student 0.1, centre momentum 0.9, EMA 0.996 -> 1 (cosine per iteration), AdamW
lr 0.0005 x B / 256, 10 warm-up epochs then cosine, gradient clipping 3.0, the last layer frozen during the
first epoch, 100 epochs. Deviations: weight decay is constant 0.04 (official: cosine 0.04 ->
0.4, the trainer has no weight-decay schedule); the crop areas are given by `global_area` / `local_area`
and become the library's affine scale (area fraction a is an enlargement of 1 / sqrt(a)); a local crop is
the augmented full-size image, then resized to `local_size` (antialiased bilinear). The trunk pools
globally ("gap"), so it accepts both sizes.

"small" preset (28 x 28 MNIST-5k): two global crops over 50-100 % of the image and no local crops, the
flattened CNN trunk, BN in the head (the official `use_bn_in_head`), teacher temperature 0.04 without
warm-up (the official main_dino.py defaults), out_dim 1024, head hidden 256, bottleneck 64, no frozen last
layer, EMA 0.99 -> 1, batch 128, Adam 1e-3 one-cycle, 10 epochs. Why (bench/diag_dino.py and
bench/results_presets.md, validation split of the training classes: train 0-2, validate 3-4): the
earlier multi-crop preset (global-average-pooled trunk, 4 local crops over 20-30 % at 14 x 14, teacher
0.04 -> 0.07 over 3 epochs, no BN in the head) collapsed to a uniform teacher output: teacher entropy
6.90 of log K = 6.93, teacher-student KL 0.009 after 10 epochs, validation MAP@R 0.526. Cause: the small
CNN's pooled features are nearly parallel (mean pairwise cosine 0.97 at init), so after centring the
teacher logits hardly differ between images; a lower temperature (0.04 or 0.02) or lr (2.5e-4) did not
help; BN in the head did (entropy 5.75, KL 0.42). Global pooling itself costs retrieval on 28 x 28
digits (untrained: 0.55-0.62 pooled vs 0.77 flattened), and a flattened trunk needs every crop at the
full size, hence no local crops. With this preset DINO trains without collapse (teacher entropy 3.5,
KL 1.2, loss 6.7 -> 4.7) but still ends below the untrained network on the validation classes (MAP@R
0.698 / 0.728 for seeds 0 / 1, old preset 0.526 / 0.625, untrained 0.779 / 0.767; bench/results_presets.md). The multi-crop setting stays available
(`pool="gap", n_local=4, local_size=14`; `pool="flatten"` requires `n_local=0`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._ssl import StepCounter, cosine_ramp, ema_parameters_
from .base import Batch, DataInfo, Method, MethodConfig, StepOutput


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, n_global: int,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """DINOLoss.forward of the official code without the centre update.

    student (V B, K) logits of V crops (the first n_global are the global ones, in the teacher's order),
    teacher (n_global B, K) logits, center (1, K). Returns the mean over the n_global (V - 1) pairs
    (i, v != i) of mean_b sum_k -softmax((t_i - c) / teacher_temp) log_softmax(s_v / student_temp).
    """
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[1] != teacher.shape[1]:
        raise ValueError(f"student and teacher must be (*, K) with the same K, got {tuple(student.shape)} "
                         f"and {tuple(teacher.shape)}")
    if n_global < 1 or teacher.shape[0] % n_global:
        raise ValueError(f"teacher rows {teacher.shape[0]} are not n_global={n_global} crops of a batch")
    b = teacher.shape[0] // n_global
    if student.shape[0] % b or student.shape[0] // b < n_global or student.shape[0] // b < 2:
        raise ValueError(f"student rows {student.shape[0]} are not >= max(2, n_global) crops of {b} images")
    v = student.shape[0] // b
    log_p = F.log_softmax(student / student_temp, dim=1).view(v, b, -1)
    q = F.softmax((teacher - center) / teacher_temp, dim=1).view(n_global, b, -1)
    # ce[i, v] = mean_b sum_k -q[i] log p[v]: one (n_global, V) contraction instead of the official double loop.
    ce = -torch.einsum("ibk,vbk->iv", q, log_p) / b
    keep = torch.ones_like(ce, dtype=torch.bool)
    keep[torch.arange(n_global), torch.arange(n_global)] = False
    return ce[keep].mean()


def teacher_temperature(epoch: int, warmup: float, final: float, warmup_epochs: int) -> float:
    """Official schedule: linspace(warmup, final, warmup_epochs) for the first epochs, then final."""
    if epoch >= warmup_epochs:
        return final
    if warmup_epochs == 1:
        return warmup
    return warmup + (final - warmup) * epoch / (warmup_epochs - 1)


class WeightNormLinear(nn.Module):
    """x @ (V / ||V||_row)^T: `nn.utils.weight_norm` with g fixed at 1 (DINO's norm_last_layer), no bias."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x):
        return F.linear(x, F.normalize(self.weight, dim=1))


class DINOHead(nn.Module):
    """MLP (Linear - [BN] - GELU, nlayers - 1 times, to the bottleneck) -> L2 normalise -> WeightNormLinear.
    `use_bn` is the official `use_bn_in_head` (a BatchNorm1d after every hidden Linear)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int, nlayers: int = 3,
                 use_bn: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(nlayers - 1):
            layers += [nn.Linear(d, hidden)] + ([nn.BatchNorm1d(hidden)] if use_bn else []) + [nn.GELU()]
            d = hidden
        layers.append(nn.Linear(d, bottleneck))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck, out_dim)

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class _Network(nn.Module):
    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x):
        return self.head(self.trunk(x))


@dataclass
class DINOConfig(MethodConfig):
    epochs: int = 100
    batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 0.0005              # x B / 256
    weight_decay: float = 0.04
    schedule: str = "cosine"
    warmup_epochs: float = 10.0
    grad_clip: Any = 3.0
    augment: Any = "mild"           # rotation / shift / noise of every crop; its scale is replaced by the areas
    pool: str = "gap"
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    use_bn_in_head: bool = False     # official option; the small preset needs it (see the module docstring)
    n_global: int = 2
    n_local: int = 8
    global_area: tuple = (0.4, 1.0)  # fraction of the image a global crop covers
    local_area: tuple = (0.05, 0.4)
    local_size: int = 12             # 96 / 224 of the 28-pixel side (the official ratio)
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 30
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996  # cosine to 1
    freeze_last_layer: int = 1       # epochs during which the last layer gets no update

    def __post_init__(self):
        super().__post_init__()
        for name in ("global_area", "local_area"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high <= 1, got {getattr(self, name)!r}")
            setattr(self, name, (float(lo), float(hi)))
        checks = [
            (self.n_global >= 1, f"n_global must be >= 1, got {self.n_global}"),
            (self.n_local >= 0, f"n_local must be >= 0, got {self.n_local}"),
            (self.n_global + self.n_local >= 2, "n_global + n_local must be >= 2 (a teacher crop needs another crop)"),
            (self.local_size >= 1, f"local_size must be >= 1, got {self.local_size}"),
            (self.student_temp > 0, f"student_temp must be > 0, got {self.student_temp}"),
            (self.teacher_temp > 0, f"teacher_temp must be > 0, got {self.teacher_temp}"),
            (self.warmup_teacher_temp > 0, f"warmup_teacher_temp must be > 0, got {self.warmup_teacher_temp}"),
            (self.warmup_teacher_temp_epochs >= 0, "warmup_teacher_temp_epochs must be >= 0"),
            (0 <= self.center_momentum <= 1, f"center_momentum must be in [0, 1], got {self.center_momentum}"),
            (0 <= self.momentum_teacher <= 1, f"momentum_teacher must be in [0, 1], got {self.momentum_teacher}"),
            (self.freeze_last_layer >= 0, f"freeze_last_layer must be >= 0, got {self.freeze_last_layer}"),
            (self.pool != "flatten" or self.n_local == 0,
             "pool='flatten' needs n_local=0 (local crops are smaller than the image); use a global pool "
             "(gap, gmp, gap+gmp) for multi-crop"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def _area_to_scale(aug, area):
    # A crop covering a fraction a of the image, resized to the full side, enlarges content by 1 / sqrt(a).
    return dataclasses.replace(aug, scale=(1.0 / math.sqrt(area[1]), 1.0 / math.sqrt(area[0])))


class DINO(Method):
    name: ClassVar[str] = "dino"
    Config: ClassVar[type] = DINOConfig
    uses_labels: ClassVar[bool] = False
    presets: ClassVar[dict] = {
        "official": {},
        # bench/results_presets.md (validation split, issue 13): the multi-crop variant (gap trunk, 4 local
        # crops at 14 x 14, teacher 0.04 -> 0.07, no BN in the head) collapsed to a uniform teacher output.
        "small": dict(epochs=10, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=1e-4,
                      schedule="onecycle", warmup_epochs=0.0, grad_clip=3.0, out_dim=1024, hidden_dim=256,
                      bottleneck_dim=64, use_bn_in_head=True, pool="flatten", n_local=0, global_area=(0.5, 1.0),
                      local_area=(0.2, 0.3), local_size=14, teacher_temp=0.04, warmup_teacher_temp_epochs=0,
                      freeze_last_layer=0, momentum_teacher=0.99),
    }

    def __init__(self, config: DINOConfig, data: DataInfo):
        super().__init__(config, data)
        self.global_augment = _area_to_scale(self.augment, config.global_area)
        self.local_augment = _area_to_scale(self.augment, config.local_area)
        trunk = self.build_trunk(pool=config.pool)
        if config.n_local:
            self._check_local_size(trunk, data.image_shape[0], config.local_size)
        head = DINOHead(trunk.out_dim, config.out_dim, config.hidden_dim, config.bottleneck_dim, config.head_layers,
                        use_bn=config.use_bn_in_head)
        self.student = _Network(trunk, head)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)  # official: starts as a copy
        self.register_buffer("center", torch.zeros(1, config.out_dim))
        self.steps = StepCounter(data.num_train // config.batch_size, config.epochs)
        self._teacher_out = None

    @staticmethod
    def _check_local_size(trunk, channels: int, size: int) -> None:
        # The trunk's pooling is laid out for the full image; a too small crop would shrink to nothing.
        was = trunk.training
        try:
            with torch.no_grad():
                trunk.eval()(torch.zeros(1, channels, size, size))
        except RuntimeError as e:
            raise ValueError(f"local_size={size} is too small for the trunk ({e})") from None
        finally:
            trunk.train(was)

    def momentum(self) -> float:
        return cosine_ramp(self.config.momentum_teacher, 1.0, self.steps.step, self.steps.total)

    def teacher_temp(self) -> float:
        c = self.config
        return teacher_temperature(int(self.steps.epoch), c.warmup_teacher_temp, c.teacher_temp,
                                   c.warmup_teacher_temp_epochs)

    def views(self, images, generator):
        c = self.config
        crops = [self.global_augment(images, generator) for _ in range(c.n_global)]
        for _ in range(c.n_local):
            crop = self.local_augment(images, generator)
            crops.append(F.interpolate(crop, size=(c.local_size, c.local_size), mode="bilinear",
                                       align_corners=False, antialias=True))
        return crops

    def view_specs(self, stage=None) -> list:
        # Official multi-crop: global crops at the full size, local crops at 96 / 224 of it.
        return ["dino_global"] * self.config.n_global + ["dino_local"] * self.config.n_local

    def training_step(self, batch: Batch) -> StepOutput:
        c = self.config
        views = batch.views
        g = torch.cat(views[: c.n_global])
        with torch.no_grad():
            t = self.teacher(g)
        # The official MultiCropWrapper: one trunk pass per crop resolution, then one head pass.
        feats = [self.student.trunk(g)]
        if len(views) > c.n_global:
            feats.append(self.student.trunk(torch.cat(views[c.n_global:])))
        s = self.student.head(torch.cat(feats))
        loss = dino_loss(s, t, self.center, c.n_global, c.student_temp, self.teacher_temp())
        self._teacher_out = t
        return StepOutput(loss, {"teacher_temp": self.teacher_temp(), "momentum": self.momentum()})

    def after_backward(self) -> None:
        if self.steps.epoch < self.config.freeze_last_layer:
            self.student.head.last_layer.weight.grad = None  # the official cancel_gradients_last_layer

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        # Official: the batch centre is all-reduced over ranks; per-rank means of equal batches average to it.
        batch_center = teacher_out.mean(0, keepdim=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_center)
            batch_center /= torch.distributed.get_world_size()
        m = self.config.center_momentum
        self.center.mul_(m).add_(batch_center, alpha=1.0 - m)

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        ema_parameters_(self.teacher, self.student, self.momentum())
        if self._teacher_out is not None:
            self.update_center(self._teacher_out)
        self._teacher_out = None
        self.steps.tick()

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.teacher.trunk(x), dim=1)
