"""Named trunks (backbones without an embedding head), built for a dataset's image shape and normalisation.

A factory is `f(image_shape (C, H, W), mean, std, **kwargs) -> nn.Module` with attribute `out_dim`; a later
issue adds torchvision backbones here.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from .small_cnn import ConvTrunk, _positive_int


def _conv_trunk(default_channels: tuple[int, ...]) -> Callable[..., nn.Module]:
    def factory(image_shape: Sequence[int], mean: float, std: float, **kwargs: Any) -> nn.Module:
        c, h, w = image_shape
        kwargs.setdefault("channels", default_channels)
        return ConvTrunk(in_channels=c, image_size=(h, w), mean=mean, std=std, **kwargs)

    return factory


TRUNKS: dict[str, Callable[..., nn.Module]] = {
    # The headless CNN of SMALL_IMAGE_RECIPES.md: 576 flattened features on 28 x 28, 64 on 8 x 8.
    "small_cnn": _conv_trunk((16, 32, 64)),
    "small_cnn_wide": _conv_trunk((32, 64, 128)),
}


def available_trunks() -> list[str]:
    return sorted(TRUNKS)


def build_trunk(name: str, image_shape: Sequence[int], mean: float = 0.0, std: float = 1.0,
                **kwargs: Any) -> nn.Module:
    """Trunk `name` for images of `image_shape` (C, H, W); extra kwargs go to its factory (e.g. pool="gap")."""
    if not isinstance(name, str) or name not in TRUNKS:
        raise ValueError(f"backbone {name!r} is unknown; available: {', '.join(available_trunks())}")
    if isinstance(image_shape, (str, bytes)) or not isinstance(image_shape, Sequence) or len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
    for v in image_shape:
        _positive_int(v, "image_shape")
    return TRUNKS[name](tuple(image_shape), mean, std, **kwargs)
