"""scikit-learn's bundled handwritten digits, split by class so test classes are unseen in training.

1,797 grey 8 x 8 images of 10 classes ship inside scikit-learn: the default data of the CLI, with the same
open-set protocol as CUB / Cars / SOP (train on some classes, retrieve among the others).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class DigitsSplit:
    train_images: torch.Tensor  # (N_train, 1, 8, 8) float32 in [0, 1]
    train_labels: torch.Tensor  # (N_train,) int64
    test_images: torch.Tensor   # (N_test, 1, 8, 8)
    test_labels: torch.Tensor   # (N_test,)


@functools.lru_cache(maxsize=1)
def _decoded() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1), torch.from_numpy(bunch.target).long()


def load_digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """images (1797, 1, 8, 8) float32 in [0, 1] (pixel / 16) and labels (1797,) int64; fresh copies per call."""
    images, labels = _decoded()
    return images.clone(), labels.clone()


def load_digits_split(train_classes: Sequence[int] = (0, 1, 2, 3, 4)) -> DigitsSplit:
    """Train on `train_classes`, test on the other digits."""
    images, labels = _decoded()
    train_classes = sorted(set(int(c) for c in train_classes))
    if not train_classes or any(c < 0 or c > 9 for c in train_classes) or len(train_classes) == 10:
        raise ValueError(f"train_classes must be a non-empty proper subset of 0..9, got {train_classes}")
    is_train = torch.isin(labels, torch.tensor(train_classes))
    return DigitsSplit(images[is_train], labels[is_train], images[~is_train], labels[~is_train])


def random_shift(images: torch.Tensor, max_shift: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random translation by up to `max_shift` pixels (zero fill): a cheap digits augmentation."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, 1, h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 1, h, w)
    return out.gather(3, cols)
