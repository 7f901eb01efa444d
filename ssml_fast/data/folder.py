"""Any image folder: one sub-folder per class, a flat unlabeled folder, or a CSV of path,label.

- class folders: ROOT/<class>/<image>; classes ordered by folder name, labels 0..C-1 in that order;
  with `train_classes` None, the first half of the classes train and the rest test (class-disjoint);
- unlabeled: ROOT/<image> (any depth) for self-supervised training; every image gets label -1 (no test
  split: evaluate on a labelled set);
- CSV: a file `path,label` per line (a header line "path,label" is allowed), paths relative to the CSV's
  folder or absolute; labels are integers or names (names are numbered in sorted order).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

from .files import IMAGE_EXTENSIONS, DatasetError, as_root, check_files_exist, file_split


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(root: Path) -> list[Path]:
    """Every image under `root` (any depth), sorted."""
    return sorted(p for p in root.rglob("*") if is_image(p) and not any(s.startswith(".") for s in p.parts[-2:]))


def class_folders(root: Path) -> dict[str, list[Path]]:
    """{folder name: its images (any depth, sorted)} for the non-empty sub-folders of `root`."""
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = list_images(d)
        if files:
            out[d.name] = files
    return out


def read_csv_list(path: Path) -> tuple[list[Path], list[int], list[str]]:
    """(paths, integer labels, class names) of a path,label CSV."""
    if not path.is_file():
        raise DatasetError(f"CSV {path} not found (expected lines 'path,label')")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            if n == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) != 2:
                raise DatasetError(f"{path} line {n}: expected 'path,label', got {','.join(row)[:80]!r}")
            rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise DatasetError(f"{path} lists no images (expected lines 'path,label')")
    raw = [r[1] for r in rows]
    if all(v.lstrip("-").isdigit() for v in raw):
        ys, names = [int(v) for v in raw], sorted(set(raw), key=int)
    else:
        names = sorted(set(raw))
        ys = [names.index(v) for v in raw]
    paths = [Path(p) if Path(p).is_absolute() else path.parent / p for p, _ in rows]
    check_files_exist(paths, path)
    return paths, ys, names


def _class_split(paths, ys, train_classes: Optional[Sequence[int]], where: Path):
    classes = sorted(set(ys))
    if len(classes) < 2:
        raise DatasetError(f"{where}: {len(classes)} class found; an open-set split needs at least 2")
    train = set(classes[: len(classes) // 2] if train_classes is None else train_classes)
    unknown = sorted(train - set(classes))
    if unknown:
        raise ValueError(f"train_classes names classes {unknown} that {where} does not have (classes {classes})")
    tr = [(p, y) for p, y in zip(paths, ys) if y in train]
    te = [(p, y) for p, y in zip(paths, ys) if y not in train]
    if not te:
        raise ValueError(f"train_classes {sorted(train)} cover every class of {where}: none left for the test")
    return tr, te


def load_image_folder(root, train_classes=None, **split_kw):
    """Class folders under `root` (labels = folder rank); the first half of the classes train by default."""
    root = as_root(root, "folder")
    per_class = class_folders(root)
    if not per_class:
        raise DatasetError(f"no class folders with images under {root} (expected {root}/<class>/<image>; for an "
                           "unlabeled folder use dataset 'unlabeled')")
    paths, ys = [], []
    for c, name in enumerate(per_class):
        paths += per_class[name]
        ys += [c] * len(per_class[name])
    tr, te = _class_split(paths, ys, train_classes, root)
    return file_split("folder", root, [p for p, _ in tr], [y for _, y in tr], [p for p, _ in te],
                      [y for _, y in te], extras={"class_names": list(per_class)}, **split_kw)


def load_csv(root, train_classes=None, **split_kw):
    """`root` is the CSV file itself, or a directory holding `labels.csv`."""
    path = Path(root).expanduser() if root is not None else None
    if path is None:
        raise ValueError("dataset 'csv' is read from disk: pass the CSV file (--data-root FILE.csv)")
    if path.is_dir():
        path = path / "labels.csv"
    paths, ys, names = read_csv_list(path)
    tr, te = _class_split(paths, ys, train_classes, path)
    return file_split("csv", path, [p for p, _ in tr], [y for _, y in tr], [p for p, _ in te],
                      [y for _, y in te], extras={"class_names": names}, **split_kw)


def load_unlabeled(root, train_classes=None, **split_kw):
    """Every image under `root` for self-supervised training (label -1, no test part)."""
    root = as_root(root, "unlabeled")
    paths = list_images(root)
    if not paths:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    if train_classes is not None:
        raise ValueError("train_classes does not apply to an unlabeled folder")
    split_kw["val_mode"] = "none"
    return file_split("unlabeled", root, paths, [-1] * len(paths), [], [], **split_kw)
