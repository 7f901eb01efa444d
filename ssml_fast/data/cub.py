"""CUB-200-2011 in its official layout, split by class: classes 1-100 train, 101-200 test.

    ROOT/                     (or ROOT/CUB_200_2011/)
      images.txt              "<image_id> <relative path>"  e.g. "1 001.Black_footed_Albatross/..._0046_18.jpg"
      image_class_labels.txt  "<image_id> <class_id 1-200>"
      images/<relative path>

The full set has 11,788 images: 5,864 in classes 1-100 and 5,924 in 101-200; those counts are checked when
all 11,788 are listed, and a smaller set (a subset, a fixture) gives a warning.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from .files import DatasetError, as_root, check_files_exist, file_split, read_lines

LAYOUT = "CUB-200-2011 layout: images.txt, image_class_labels.txt and images/ in one directory"
FULL_COUNTS = {"total": 11_788, "train": 5_864, "test": 5_924}


def cub_dir(root) -> Path:
    root = as_root(root, "cub")
    for d in (root, root / "CUB_200_2011"):
        if (d / "images.txt").is_file():
            return d
    raise DatasetError(f"CUB-200-2011: images.txt not found: expected {root / 'images.txt'} or "
                       f"{root / 'CUB_200_2011' / 'images.txt'} ({LAYOUT})")


def _table(path: Path, what: str) -> dict[int, str]:
    out = {}
    for n, line in enumerate(read_lines(path, LAYOUT), 1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{path} line {n}: expected '<image_id> <{what}>', got {line[:80]!r}")
        out[int(parts[0])] = parts[1]
    return out


def read_cub(root) -> tuple[list[Path], list[int]]:
    """(paths, labels 1-200) of every listed image, in images.txt order."""
    d = cub_dir(root)
    images = _table(d / "images.txt", "relative path")
    labels = _table(d / "image_class_labels.txt", "class id")
    missing_ids = [i for i in images if i not in labels]
    if missing_ids:
        raise DatasetError(f"{d / 'image_class_labels.txt'} has no class for image ids {missing_ids[:5]} of "
                           f"{d / 'images.txt'}")
    paths, ys = [], []
    for i, rel in images.items():
        y = labels[i]
        if not y.isdigit() or not 1 <= int(y) <= 200:
            raise DatasetError(f"{d / 'image_class_labels.txt'}: class of image {i} must be 1-200, got {y!r}")
        paths.append(d / "images" / rel)
        ys.append(int(y))
    check_files_exist(paths, d / "images.txt")
    return paths, ys


def load_cub(root, **split_kw):
    paths, ys = read_cub(root)
    train = [(p, y) for p, y in zip(paths, ys) if y <= 100]
    test = [(p, y) for p, y in zip(paths, ys) if y > 100]
    if len(paths) == FULL_COUNTS["total"]:
        if (len(train), len(test)) != (FULL_COUNTS["train"], FULL_COUNTS["test"]):
            raise DatasetError(f"CUB-200-2011 under {cub_dir(root)}: {len(train)} / {len(test)} images in classes "
                               f"1-100 / 101-200, expected {FULL_COUNTS['train']} / {FULL_COUNTS['test']}")
    else:
        warnings.warn(f"CUB-200-2011 under {cub_dir(root)} lists {len(paths)} images, not the full "
                      f"{FULL_COUNTS['total']} ({len(train)} train / {len(test)} test): results are not comparable "
                      "with published figures", stacklevel=2)
    return file_split("cub", cub_dir(root), [p for p, _ in train], [y for _, y in train],
                      [p for p, _ in test], [y for _, y in test], **split_kw)
