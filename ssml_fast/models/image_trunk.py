"""What the large backbones (torchvision, timm) share: input normalisation, grey -> RGB, memory layout,
global pooling and the freezing recipe. Subclasses provide `forward_map` and the stage list.

Input normalisation. Images arrive in [0, 1], (B, C, H, W) with C = 1 or 3; grey images are repeated to
three channels (the backbones' stems are RGB). Then `(x - mean) / std` per channel, with
  * pretrained weights (`pretrained` other than "none", or a `weights` file): the statistics the weights
    were trained with (ImageNet mean / std for torchvision ResNets; 0.5 / 0.5 for torchvision's GoogLeNet,
    which is what its `transform_input` maps ImageNet-normalised input to; timm's `pretrained_cfg`). The
    dataset's own mean / std (DataInfo) are ignored: the pretrained filters expect their input distribution.
  * from scratch ("none"): the dataset's mean / std (DataInfo), as the small CNN does.
mean / std are (1, 3, 1, 1) buffers, so they travel with the state dict (a checkpoint evaluates with the
normalisation it was trained with).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .freezing import FreezableTrunk
from .pooling import GLOBAL_POOLS, GlobalPool

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAINED = ("none", "imagenet", "imagenet_v2")


def _per_channel(value, arg: str) -> tuple[float, float, float]:
    vals = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if isinstance(vals, torch.Tensor):
        vals = vals.flatten().tolist()
    if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or len(vals) not in (1, 3):
        raise ValueError(f"{arg} must be a number or 3 numbers (per channel), got {value!r}")
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not float("-inf") < v < float("inf"):
            raise ValueError(f"{arg} must be finite numbers, got {value!r}")
        out.append(float(v))
    return tuple(out * 3) if len(out) == 1 else tuple(out)  # type: ignore[return-value]


class ImageTrunk(FreezableTrunk, nn.Module):
    """Base of the torchvision / timm trunks: (B, C, H, W) images in [0, 1] -> (B, out_dim) features."""

    is_trunk = True

    def __init__(self, image_shape: Sequence[int], mean, std, pool: str = "gap", gem_p: float = 3.0,
                 channels_last: bool = True):
        nn.Module.__init__(self)
        c = image_shape[0]
        if c not in (1, 3):
            raise ValueError(f"image_shape: these backbones take 1- or 3-channel images, got {c} channels")
        m, s = _per_channel(mean, "mean"), _per_channel(std, "std")
        if min(s) <= 0:
            raise ValueError(f"std must be > 0, got {std!r}")
        if pool not in GLOBAL_POOLS:
            raise ValueError(f"pool must be one of {', '.join(GLOBAL_POOLS)} for this backbone, got {pool!r} "
                             "('flatten' is for the small CNNs on fixed-size images; choose one with --pool or --set pool=...)")
        if not isinstance(channels_last, bool):
            raise ValueError(f"channels_last must be true or false, got {channels_last!r}")
        self.in_channels = c
        self.image_shape = tuple(image_shape)
        self.register_buffer("mean", torch.tensor(m).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(s).view(1, 3, 1, 1))
        self.pool = pool
        self.global_pool = GlobalPool(pool, gem_p=gem_p)
        self.channels_last = channels_last

    def _finish(self) -> None:
        """Called by subclasses once their network exists: memory layout of the weights."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W) images, got shape {tuple(x.shape)}")
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_pool(self.forward_map(x))
