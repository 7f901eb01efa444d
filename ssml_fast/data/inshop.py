"""In-Shop Clothes Retrieval (DeepFashion) in its official layout: train items, query / gallery test items.

    ROOT/                        (or ROOT/Eval/ for list_eval_partition.txt)
      list_eval_partition.txt    line 1: image count; line 2: "image_name item_id evaluation_status";
                                 then "img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train|query|gallery"
      img/...                    (image paths relative to ROOT, or ROOT/Img/)

Evaluation queries the query images against the gallery (`ImageFiles.gallery_mask`), not leave-one-out.
The full set: 25,882 training images of 3,997 items; 14,218 queries and 12,612 gallery images of 3,985 items.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from .files import DatasetError, as_root, check_files_exist, file_split, read_lines

LAYOUT = "In-Shop layout: list_eval_partition.txt beside img/"
FULL_COUNTS = {"train": 25_882, "query": 14_218, "gallery": 12_612}


def read_partition(root) -> dict[str, tuple[list[Path], list[int]]]:
    root = as_root(root, "inshop")
    for d in (root, root / "Eval"):
        if (d / "list_eval_partition.txt").is_file():
            path = d / "list_eval_partition.txt"
            break
    else:
        raise DatasetError(f"In-Shop: list_eval_partition.txt not found: expected {root / 'list_eval_partition.txt'} "
                           f"({LAYOUT})")
    lines = read_lines(path, LAYOUT)
    if len(lines) < 2 or not lines[0].isdigit() or lines[1].split() != ["image_name", "item_id", "evaluation_status"]:
        raise DatasetError(f"{path}: expected the image count on line 1 and 'image_name item_id evaluation_status' "
                           "on line 2")
    if int(lines[0]) != len(lines) - 2:
        raise DatasetError(f"{path}: line 1 announces {lines[0]} images but {len(lines) - 2} are listed")
    image_root = root if (root / "img").is_dir() or not (root / "Img").is_dir() else root / "Img"
    out: dict[str, tuple[list[Path], list[int]]] = {k: ([], []) for k in ("train", "query", "gallery")}
    for n, line in enumerate(lines[2:], 3):
        parts = line.split()
        if len(parts) != 3 or parts[2] not in out or not parts[1].startswith("id_") or not parts[1][3:].isdigit():
            raise DatasetError(f"{path} line {n}: expected '<image> id_<digits> train|query|gallery', got {line[:80]!r}")
        out[parts[2]][0].append(image_root / parts[0])
        out[parts[2]][1].append(int(parts[1][3:]))
    for paths, _ in out.values():
        check_files_exist(paths, path)
    return out


def load_inshop(root, **split_kw):
    parts = read_partition(root)
    counts = {k: len(v[0]) for k, v in parts.items()}
    if counts != FULL_COUNTS:
        warnings.warn(f"In-Shop under {root}: {counts}, not the full {FULL_COUNTS}", stacklevel=2)
    (tr_p, tr_y), (q_p, q_y), (g_p, g_y) = parts["train"], parts["query"], parts["gallery"]
    return file_split("inshop", root, tr_p, tr_y, q_p + g_p, q_y + g_y,
                      test_gallery=[False] * len(q_p) + [True] * len(g_p), **split_kw)
