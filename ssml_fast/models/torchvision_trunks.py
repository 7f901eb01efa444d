"""torchvision ResNet-18/50/101 and GoogLeNet as headless trunks, with local ImageNet weights only.

The network is built with `weights=None` (torchvision never downloads) and the ImageNet state dict is
read from the local torch hub cache or a `weights` file (ssml_fast.models.weights), then the classifier
(fc; GoogLeNet's aux heads and dropout) is dropped. The state-dict keys are torchvision's under `net.`.

Stages (what `freeze_stages=N` freezes, the first N):
  ResNet:   1 stem (conv1, bn1), 2 layer1, 3 layer2, 4 layer3, 5 layer4      (out 512 / 2048 / 2048)
  GoogLeNet: 1 stem (conv1-conv3), 2 inception3a-b, 3 inception4a-e, 4 inception5a-b   (out 1024)
Feature maps are 1/32 of the input side (224 -> 7, 32 -> 1).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from . import weights as W
from .image_trunk import IMAGENET_MEAN, IMAGENET_STD, PRETRAINED, ImageTrunk

_RESNET_STAGES = (("conv1", "bn1", "relu", "maxpool"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))
_GOOGLENET_STAGES = (("conv1", "maxpool1", "conv2", "conv3", "maxpool2"),
                     ("inception3a", "inception3b", "maxpool3"),
                     ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4"),
                     ("inception5a", "inception5b"))
# Older torchvision file names of the same V1 weights (InsCLR's model_zoo uses resnet101-5d3b4d8f.pth).
_LEGACY_FILES = {"resnet18": ("resnet18-5c106cde.pth",), "resnet50": ("resnet50-19c8e357.pth",),
                 "resnet101": ("resnet101-5d3b4d8f.pth",), "googlenet": ()}
ARCHS = ("resnet18", "resnet50", "resnet101", "googlenet")


def _weights_enum(arch: str):
    import torchvision.models as tvm

    return {"resnet18": tvm.ResNet18_Weights, "resnet50": tvm.ResNet50_Weights,
            "resnet101": tvm.ResNet101_Weights, "googlenet": tvm.GoogLeNet_Weights}[arch]


def expected_files(arch: str, pretrained: str) -> list[str]:
    """The torch hub file names that hold `arch`'s `pretrained` weights, preferred first."""
    enum = _weights_enum(arch)
    tag = {"imagenet": "IMAGENET1K_V1", "imagenet_v2": "IMAGENET1K_V2"}[pretrained]
    if tag not in enum.__members__:
        raise ValueError(f"pretrained={pretrained!r}: torchvision has no {tag} weights for {arch} "
                         f"(available: {', '.join(enum.__members__)}); use 'imagenet' or 'none'")
    names = [enum[tag].url.rsplit("/", 1)[-1]]
    return names + list(_LEGACY_FILES[arch]) if tag == "IMAGENET1K_V1" else names


def locate_weights(arch: str, pretrained: str) -> W.Path:
    path, directory = W.find_torch_hub_file(expected_files(arch, pretrained))
    if path is None:
        name = expected_files(arch, pretrained)[0]
        tag = "IMAGENET1K_V2" if pretrained == "imagenet_v2" else "IMAGENET1K_V1"
        url = _weights_enum(arch)[tag].url
        raise FileNotFoundError(
            f"pretrained={pretrained!r} for backbone {arch!r}: weight file {name} not found in {directory} "
            f"(nothing is downloaded). Put the file there (from {url}, e.g. on a machine with internet: "
            f"python -c \"import torchvision; torchvision.models.{arch}(weights='{tag}')\" fills that "
            f"cache; set TORCH_HOME to use another cache), or pass --weights PATH, or --pretrained none "
            f"to train from scratch")
    return path


class TorchvisionTrunk(ImageTrunk):
    """(B, C, H, W) in [0, 1] -> (B, out_dim) pooled features of a torchvision backbone without its fc."""

    def __init__(self, arch: str, image_shape: Sequence[int], mean=0.0, std=1.0, *, pool: str = "gap",
                 pretrained: Optional[str] = "imagenet", weights: Optional[str] = None, freeze_stages: int = 0,
                 bn_freeze: bool = False, channels_last: bool = True, gem_p: float = 3.0):
        import torchvision.models as tvm

        if arch not in ARCHS:
            raise ValueError(f"backbone {arch!r} is not a torchvision trunk; available: {', '.join(ARCHS)}")
        pretrained = "imagenet" if pretrained is None else pretrained
        if pretrained not in PRETRAINED:
            raise ValueError(f"pretrained must be one of {', '.join(PRETRAINED)}, got {pretrained!r}")
        if weights is not None and pretrained == "none":
            raise ValueError("weights: a weight file was given with pretrained='none'; drop one of them")
        if pretrained != "none" and weights is None:
            expected_files(arch, pretrained)  # an unknown tag fails before anything is built
        if pretrained == "none":
            m, s = mean, std
        elif arch == "googlenet":
            m, s = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # torchvision's transform_input, folded in
        else:
            m, s = IMAGENET_MEAN, IMAGENET_STD
        super().__init__(image_shape, m, s, pool=pool, gem_p=gem_p, channels_last=channels_last)
        self.arch, self.pretrained = arch, pretrained
        if arch == "googlenet":
            # Its truncated-normal init takes seconds on a CPU; loaded weights replace it anyway.
            net = tvm.googlenet(weights=None, aux_logits=False, transform_input=False,
                                init_weights=pretrained == "none")
            stages, ignore = _GOOGLENET_STAGES, ("fc.", "aux1.", "aux2.")
            net.dropout = nn.Identity()
        else:
            net = getattr(tvm, arch)(weights=None)
            stages, ignore = _RESNET_STAGES, ("fc.",)
        net.fc = nn.Identity()
        net.avgpool = nn.Identity()
        self.weights_source: Optional[str] = None
        if pretrained != "none" and not W.loading_skipped():
            path = W.Path(weights) if weights is not None else locate_weights(arch, pretrained)
            W.load_into(net, W.read_state_dict(path, "weights"), str(path), ignore_prefixes=ignore)
            self.weights_source = str(path)
        self.net = net
        self._stage_names = stages
        self.out_dim = 1024 if arch == "googlenet" else net.layer4[-1].conv1.in_channels
        self._finish()
        self.configure_freezing(freeze_stages, bn_freeze)

    def _stage_modules(self) -> list[list[nn.Module]]:
        return [[getattr(self.net, n) for n in names] for names in self._stage_names]

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        for names in self._stage_names:
            for n in names:
                x = getattr(self.net, n)(x)
        return x

    def extra_repr(self) -> str:
        return (f"arch={self.arch}, pretrained={self.pretrained}, pool={self.pool}, out_dim={self.out_dim}, "
                f"freeze_stages={self.freeze_stages}, bn_freeze={self.bn_freeze}")
