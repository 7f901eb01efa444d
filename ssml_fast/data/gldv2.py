"""Google Landmarks Dataset v2, training part (evaluated on rOxford5k / rParis6k, `revisitop.py`).

    ROOT/
      train.csv         "id,url,landmark_id"          (the full set: 4,132,914 images, 203,094 landmarks)
      train_clean.csv   "landmark_id,images"           images = space-separated ids (the clean subset:
                                                       1,580,470 images, 81,313 landmarks)
      train/a/b/c/abc....jpg                           image id "abc..." under its first three characters

Variants: `gldv2` (train.csv), `gldv2_clean` (train_clean.csv; `min_images` keeps landmarks with at least
that many images, InsCLR uses 15), `gldv2_6pct` (the thesis's subset: a seeded random 6 % of the landmarks
of train.csv, 12,586 landmarks / 239,979 images in the thesis's draw, which is not published; ours uses
`subset_seed`). Labels are the landmark ids. There is no test part: every image trains.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

from .files import DatasetError, as_root, check_files_exist, file_split

LAYOUT = "GLDv2 layout: train.csv / train_clean.csv beside train/<a>/<b>/<c>/<id>.jpg"


def image_path(root: Path, image_id: str) -> Path:
    return root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def _rows(path: Path, header: list[str]):
    if not path.is_file():
        raise DatasetError(f"GLDv2: {path.name} not found: expected {path} ({LAYOUT})")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        first = next(reader, None)
        if first is None or [c.strip() for c in first] != header:
            raise DatasetError(f"{path}: the header must be {','.join(header)!r}, got {','.join(first or [])[:80]!r}")
        for n, row in enumerate(reader, 2):
            if len(row) != len(header):
                raise DatasetError(f"{path} line {n}: expected {len(header)} columns ({','.join(header)}), got {row[:4]}")
            yield n, row


def read_gldv2(root, clean: bool = False, min_images: int = 1) -> tuple[list[Path], list[int]]:
    root = as_root(root, "gldv2")
    per_landmark: dict[int, list[str]] = {}
    if clean:
        path = root / "train_clean.csv"
        for n, (lid, ids) in _rows(path, ["landmark_id", "images"]):
            if not lid.isdigit():
                raise DatasetError(f"{path} line {n}: landmark_id must be an integer, got {lid!r}")
            per_landmark.setdefault(int(lid), []).extend(ids.split())
    else:
        path = root / "train.csv"
        for n, (iid, _url, lid) in _rows(path, ["id", "url", "landmark_id"]):
            if not lid.isdigit() or len(iid) < 3:
                raise DatasetError(f"{path} line {n}: expected '<id>,<url>,<integer landmark_id>', got {iid!r}, {lid!r}")
            per_landmark.setdefault(int(lid), []).append(iid)
    paths, ys = [], []
    for lid in sorted(per_landmark):
        ids = per_landmark[lid]
        if len(ids) >= min_images:
            paths += [image_path(root, i) for i in ids]
            ys += [lid] * len(ids)
    check_files_exist(paths, path)
    return paths, ys


def load_gldv2(root, *, clean: bool = False, min_images: int = 1, class_fraction: float = 1.0,
               subset_seed: int = 0, name: str = "gldv2", **split_kw):
    if not 0 < class_fraction <= 1:
        raise ValueError(f"class_fraction must be in (0, 1], got {class_fraction}")
    paths, ys = read_gldv2(root, clean=clean, min_images=min_images)
    if class_fraction < 1:
        classes = sorted(set(ys))
        keep = set(random.Random(subset_seed).sample(classes, max(1, round(class_fraction * len(classes)))))
        paths, ys = [p for p, y in zip(paths, ys) if y in keep], [y for y in ys if y in keep]
    if not paths:
        raise DatasetError(f"GLDv2 under {root}: no landmark with at least {min_images} images")
    return file_split(name, root, paths, ys, [], [], **split_kw)
