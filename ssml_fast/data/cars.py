"""Cars196 (Stanford Cars), split by class: classes 1-98 train, 99-196 test (the DML protocol).

Two layouts:
- the devkit annotations of the full image set:
      ROOT/cars_annos.mat     struct `annotations` with relative_im_path, class (1-196), ...
      ROOT/car_ims/000001.jpg ...
  read with scipy.io.loadmat (scipy must be installed for this layout);
- class folders: ROOT/<class>/<image> for the 196 classes, or ROOT/train/<class>/ and ROOT/test/<class>/
  (the classification split of re-distributions, merged and split again by class). Folders are ordered
  by name (numerically when every name is a number); the first 98 train.

The full set has 16,185 images: 8,054 in classes 1-98 and 8,131 in 99-196; checked when all are present.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from .files import DatasetError, as_root, check_files_exist, file_split
from .folder import class_folders

LAYOUT = "Cars196: cars_annos.mat beside car_ims/, or one folder per class"
FULL_COUNTS = {"total": 16_185, "train": 8_054, "test": 8_131}


def _from_mat(root: Path) -> tuple[list[Path], list[int]]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError(f"reading {root / 'cars_annos.mat'} needs scipy (pip install scipy), or use the "
                          "class-folder layout") from None
    mat_path = root / "cars_annos.mat"
    try:
        mat = loadmat(str(mat_path), squeeze_me=True)
        ann = mat["annotations"]
        rel = [str(a) for a in ann["relative_im_path"].ravel()]
        ys = [int(c) for c in ann["class"].ravel()]
    except Exception as e:  # noqa: BLE001 - any malformed file: say which and what was expected
        raise DatasetError(f"{mat_path} is not the Cars196 devkit annotation file (expected a struct array "
                           f"'annotations' with fields relative_im_path and class): {type(e).__name__}: {e}") from None
    paths = [root / r for r in rel]
    bad = [y for y in ys if not 1 <= y <= 196]
    if bad:
        raise DatasetError(f"{mat_path}: classes must be 1-196, got {bad[:5]}")
    check_files_exist(paths, mat_path)
    return paths, ys


def _from_folders(root: Path) -> tuple[list[Path], list[int]]:
    parts = [root / "train", root / "test"] if (root / "train").is_dir() and (root / "test").is_dir() else [root]
    per_class: dict[str, list[Path]] = {}
    for part in parts:
        for name, files in class_folders(part).items():
            per_class.setdefault(name, []).extend(files)
    if not per_class:
        raise DatasetError(f"Cars196: neither {root / 'cars_annos.mat'} nor class folders with images under {root} "
                           f"({LAYOUT})")
    names = sorted(per_class, key=lambda n: (int(n), n) if all(k.isdigit() for k in per_class) else (0, n))
    paths, ys = [], []
    for c, name in enumerate(names, 1):
        paths += per_class[name]
        ys += [c] * len(per_class[name])
    return paths, ys


def read_cars(root) -> tuple[list[Path], list[int], bool]:
    """(paths, labels 1-196, whether they came from cars_annos.mat)."""
    root = as_root(root, "cars196")
    if (root / "cars_annos.mat").is_file():
        return (*_from_mat(root), True)
    return (*_from_folders(root), False)


def load_cars196(root, **split_kw):
    paths, ys, from_mat = read_cars(root)
    root = as_root(root, "cars196")
    n_classes = len(set(ys))
    half = 98  # the devkit's class ids, or the rank of a folder among 196
    if not from_mat and n_classes != 196:
        half = max(1, n_classes // 2)
        warnings.warn(f"Cars196 under {root} has {n_classes} class folders, not 196: the first {half} train",
                      stacklevel=2)
    train = [(p, y) for p, y in zip(paths, ys) if y <= half]
    test = [(p, y) for p, y in zip(paths, ys) if y > half]
    if len(paths) == FULL_COUNTS["total"]:
        if (len(train), len(test)) != (FULL_COUNTS["train"], FULL_COUNTS["test"]):
            raise DatasetError(f"Cars196 under {root}: {len(train)} / {len(test)} images in classes 1-98 / 99-196, "
                               f"expected {FULL_COUNTS['train']} / {FULL_COUNTS['test']}")
    elif n_classes == 196:
        warnings.warn(f"Cars196 under {root} has {len(paths)} images, not the full {FULL_COUNTS['total']}: "
                      "results are not comparable with published figures", stacklevel=2)
    return file_split("cars196", root, [p for p, _ in train], [y for _, y in train],
                      [p for p, _ in test], [y for _, y in test], **split_kw)
