"""Named trunks (backbones without an embedding head), built for a dataset's image shape and normalisation.

A factory is `f(image_shape (C, H, W), mean, std, **kwargs) -> nn.Module` with attribute `out_dim` and a
`forward_map` (the feature map before pooling). Every factory takes the backbone options of MethodConfig:
pool, pretrained, weights, freeze_stages, bn_freeze, channels_last, gem_p.

| name | pretrained default | pools | stages | features |
|---|---|---|---|---|
| small_cnn, small_cnn_wide | none (no weights exist) | flatten (default), gap, gmp, gap+gmp, gem | one per block | 576 / 1152 on 28x28 flatten; 64 / 128 pooled |
| resnet18, resnet50, resnet101 | imagenet (torchvision V1; imagenet_v2 for 50 / 101) | gap (default), gmp, gap+gmp, gem | 5: stem, layer1-4 | 512, 2048, 2048 |
| googlenet | imagenet (torchvision V1) | as ResNet | 4: stem, inception3, 4, 5 | 1024 |
| timm:<name> | imagenet (timm's default tag) | as ResNet, or model (timm's own) | feature_info entries | model.num_features |
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from torch import nn

from .small_cnn import ConvTrunk, _positive_int

TIMM_PREFIX = "timm:"


def _conv_trunk(default_channels: tuple[int, ...]) -> Callable[..., nn.Module]:
    def factory(image_shape: Sequence[int], mean: float, std: float, *, pretrained: Optional[str] = None,
                weights: Optional[str] = None, **kwargs: Any) -> nn.Module:
        if pretrained not in (None, "none"):
            raise ValueError(f"pretrained={pretrained!r}: the small CNNs have no pretrained weights; use "
                             "pretrained='none' (their default)")
        if weights is not None:
            raise ValueError("weights: the small CNNs have no pretrained weights to load")
        c, h, w = image_shape
        kwargs.setdefault("channels", default_channels)
        return ConvTrunk(in_channels=c, image_size=(h, w), mean=mean, std=std, **kwargs)

    return factory


def _torchvision(arch: str) -> Callable[..., nn.Module]:
    def factory(image_shape: Sequence[int], mean, std, **kwargs: Any) -> nn.Module:
        from .torchvision_trunks import TorchvisionTrunk

        return TorchvisionTrunk(arch, image_shape, mean, std, **kwargs)

    return factory


TRUNKS: dict[str, Callable[..., nn.Module]] = {
    # The headless CNN of SMALL_IMAGE_RECIPES.md: 576 flattened features on 28 x 28, 64 on 8 x 8.
    "small_cnn": _conv_trunk((16, 32, 64)),
    "small_cnn_wide": _conv_trunk((32, 64, 128)),
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
    "resnet101": _torchvision("resnet101"),
    "googlenet": _torchvision("googlenet"),
}


def available_trunks() -> list[str]:
    return sorted(TRUNKS) + [TIMM_PREFIX + "<timm model name>"]


def is_known_trunk(name: object) -> bool:
    """Whether `name` names a registered trunk or has the timm prefix (the timm name is checked on build)."""
    return isinstance(name, str) and (name in TRUNKS or (name.startswith(TIMM_PREFIX) and len(name) > 5))


def build_trunk(name: str, image_shape: Sequence[int], mean=0.0, std=1.0, **kwargs: Any) -> nn.Module:
    """Trunk `name` for images of `image_shape` (C, H, W); extra kwargs go to its factory (e.g. pool="gap").

    The trunk is tagged `is_trunk = True`, which Method.parameter_groups uses to tell the backbone from
    the heads (head_lr).
    """
    if not is_known_trunk(name):
        raise ValueError(f"backbone {name!r} is unknown; available: {', '.join(available_trunks())}")
    if isinstance(image_shape, (str, bytes)) or not isinstance(image_shape, Sequence) or len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
    for v in image_shape:
        _positive_int(v, "image_shape")
    if name.startswith(TIMM_PREFIX):
        from .timm_trunk import TimmTrunk

        trunk = TimmTrunk(name[len(TIMM_PREFIX):], tuple(image_shape), mean, std, **kwargs)
    else:
        trunk = TRUNKS[name](tuple(image_shape), mean, std, **kwargs)
    trunk.is_trunk = True
    return trunk
