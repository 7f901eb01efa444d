"""Stanford Online Products in its official layout (train and test classes are disjoint).

    ROOT/                      (or ROOT/Stanford_Online_Products/)
      Ebay_train.txt           header "image_id class_id super_class_id path", then one line per image
      Ebay_test.txt            same; paths relative to ROOT, e.g. "bicycle_final/111085122871_0.JPG"
      bicycle_final/ ... toaster_final/

The full set: 59,551 training images of 11,318 classes, 60,502 test images of 11,316 classes (checked
when both files list the full set).
"""
from __future__ import annotations

import warnings
from pathlib import Path

from .files import DatasetError, as_root, check_files_exist, file_split, read_lines

LAYOUT = "Stanford Online Products layout: Ebay_train.txt, Ebay_test.txt and the *_final/ folders"
FULL_COUNTS = {"train": 59_551, "test": 60_502}


def sop_dir(root) -> Path:
    root = as_root(root, "sop")
    for d in (root, root / "Stanford_Online_Products"):
        if (d / "Ebay_train.txt").is_file():
            return d
    raise DatasetError(f"Stanford Online Products: Ebay_train.txt not found: expected {root / 'Ebay_train.txt'} "
                       f"({LAYOUT})")


def read_ebay(path: Path) -> tuple[list[Path], list[int]]:
    lines = read_lines(path, LAYOUT)
    if not lines or lines[0].split() != ["image_id", "class_id", "super_class_id", "path"]:
        raise DatasetError(f"{path}: the first line must be 'image_id class_id super_class_id path', got "
                           f"{(lines[0] if lines else '')[:80]!r}")
    paths, ys = [], []
    for n, line in enumerate(lines[1:], 2):
        parts = line.split()
        if len(parts) != 4 or not parts[1].isdigit():
            raise DatasetError(f"{path} line {n}: expected 'image_id class_id super_class_id path', got {line[:80]!r}")
        paths.append(path.parent / parts[3])
        ys.append(int(parts[1]))
    check_files_exist(paths, path)
    return paths, ys


def load_sop(root, **split_kw):
    d = sop_dir(root)
    tr_p, tr_y = read_ebay(d / "Ebay_train.txt")
    te_p, te_y = read_ebay(d / "Ebay_test.txt")
    if (len(tr_p), len(te_p)) != (FULL_COUNTS["train"], FULL_COUNTS["test"]):
        warnings.warn(f"Stanford Online Products under {d}: {len(tr_p)} / {len(te_p)} images, not the full "
                      f"{FULL_COUNTS['train']} / {FULL_COUNTS['test']}", stacklevel=2)
    return file_split("sop", d, tr_p, tr_y, te_p, te_y, **split_kw)
