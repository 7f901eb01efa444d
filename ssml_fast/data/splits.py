"""Open-set splits of a labelled image tensor: train on some classes, test on the others.

The validation split used for model selection is always carved from the *training* classes, so choosing
hyper-parameters or epochs never looks at a test class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import torch

VAL_MODES = ("samples", "classes", "none")


@dataclass
class ImageSplit:
    """Tensors of one open-set split; `*_images` are (N, C, H, W) float32 in [0, 1], `*_labels` (N,) int64.

    `train_classes` are the classes whose images are in `train_images` (with val_mode "classes" that excludes
    the held-out validation classes), `val_classes` those in `val_images`, `test_classes` those in
    `test_images`; each list is sorted. `mean` / `std` are the dataset's fixed input normalisation
    constants, applied by the model (`(x - mean) / std`), not baked into the images.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    train_classes: list[int]
    test_classes: list[int]
    val_classes: list[int]
    mean: float
    std: float
    val_mode: str = "samples"
    seed: int = 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "ImageSplit":
        """A copy with every tensor on `device` (small datasets live on the GPU for the whole run)."""
        moved = {k: getattr(self, k).to(device) for k in _TENSOR_FIELDS}
        return replace(self, **moved)

    def describe(self) -> str:
        """One line for logs: sizes and classes of each part."""
        return (f"{self.name}: train {len(self.train_labels)} images of classes {self.train_classes}, "
                f"val {len(self.val_labels)} ({self.val_mode}, classes {self.val_classes}), "
                f"test {len(self.test_labels)} of classes {self.test_classes}; image {self.image_shape}")


_TENSOR_FIELDS = ("train_images", "train_labels", "test_images", "test_labels", "val_images", "val_labels")


def _as_class_list(value: Iterable[int] | None, arg: str) -> list[int]:
    if value is None or isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{arg} must be a sequence of class ids (ints), got {value!r}")
    out = []
    for c in value:
        if isinstance(c, torch.Tensor) and c.numel() == 1 and not c.is_floating_point():
            c = int(c)
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"{arg} must contain ints, got {c!r} in {value!r}")
        out.append(int(c))
    return sorted(set(out))


def split_by_class(
    images: torch.Tensor,
    labels: torch.Tensor,
    train_classes: Sequence[int],
    *,
    name: str,
    mean: float,
    std: float,
    val_mode: str = "samples",
    val_fraction: float = 0.1,
    val_classes: Sequence[int] | None = None,
    seed: int = 0,
) -> ImageSplit:
    """Split `images` (N, C, H, W) float / `labels` (N,) int by class into train / val / test.

    test = every image of a class not in `train_classes` (at least one such class must exist).
    Validation comes from the training classes only:
    - "samples": a stratified `val_fraction` of each training class (round(fraction * n_c) images, at least
      one when fraction > 0, always leaving one for training), chosen with a generator seeded by `seed`;
      fraction 0 gives an empty validation set.
    - "classes": the classes in `val_classes` (default: the largest training class id) are held out
      entirely, class-disjoint like the open-set test; at least 2 training classes must remain.
    - "none": empty validation set.
    Every part keeps the original order of `images`. The returned tensors are copies.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a floating (N, C, H, W) tensor, got "
                         f"{type(images).__name__ if not isinstance(images, torch.Tensor) else (images.dtype, tuple(images.shape))}")
    if (not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point()
            or labels.dtype == torch.bool):
        raise ValueError("labels must be an integer (N,) tensor, got "
                         f"{(labels.dtype, tuple(labels.shape)) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} rows but images has {images.shape[0]}")
    if labels.device != images.device:
        raise ValueError(f"labels is on {labels.device} but images is on {images.device}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    for arg, v in (("mean", mean), ("std", std)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{arg} must be a finite number, got {v!r}")
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std!r}")
    if val_mode not in VAL_MODES:
        raise ValueError(f"val_mode must be one of {', '.join(VAL_MODES)}, got {val_mode!r}")
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
            or not (0.0 <= val_fraction < 1.0)):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if val_classes is not None and val_mode != "classes":
        raise ValueError(f"val_classes is only used with val_mode='classes', got val_mode={val_mode!r}")

    labels = labels.long()
    present = sorted(torch.unique(labels).tolist())
    requested = _as_class_list(train_classes, "train_classes")
    if not requested:
        raise ValueError("train_classes is empty: name at least one training class")
    missing = [c for c in requested if c not in present]
    if missing:
        raise ValueError(f"train_classes names classes {missing} that do not exist in {name} "
                         f"(classes: {present})")
    test_classes = [c for c in present if c not in requested]
    if not test_classes:
        raise ValueError(f"train_classes {requested} cover every class of {name}: no class is left for the "
                         "open-set test")

    if val_mode == "classes":
        held = [requested[-1]] if val_classes is None else _as_class_list(val_classes, "val_classes")
        if not held:
            raise ValueError("val_classes is empty: name at least one training class to hold out")
        outside = [c for c in held if c not in requested]
        if outside:
            raise ValueError(f"val_classes {outside} are not training classes {requested}: validation must "
                             "come from the training classes")
        fit_classes = [c for c in requested if c not in held]
        if len(fit_classes) < 2:
            raise ValueError(f"val_classes {held} leave {len(fit_classes)} training class(es) of "
                             f"train_classes {requested}; at least 2 must remain")
    else:
        held, fit_classes = [], requested

    cpu_labels = labels.cpu()
    is_test = torch.isin(cpu_labels, torch.tensor(test_classes))
    is_val = torch.isin(cpu_labels, torch.tensor(held)) if held else torch.zeros_like(is_test)
    if val_mode == "samples" and val_fraction > 0:
        gen = torch.Generator().manual_seed(seed)
        for c in fit_classes:
            idx = torch.nonzero(cpu_labels == c).squeeze(1)
            n_val = min(len(idx) - 1, max(1, round(val_fraction * len(idx))))
            if n_val > 0:
                is_val[idx[torch.randperm(len(idx), generator=gen)[:n_val]]] = True
    is_train = ~(is_test | is_val)
    val_present = sorted(torch.unique(cpu_labels[is_val]).tolist())

    def take(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.nonzero(mask).squeeze(1).to(images.device)
        return images.index_select(0, idx).float(), labels.index_select(0, idx)

    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = take(is_train), take(is_val), take(is_test)
    return ImageSplit(
        name=name, train_images=tr_x, train_labels=tr_y, test_images=te_x, test_labels=te_y,
        val_images=va_x, val_labels=va_y, train_classes=fit_classes, test_classes=test_classes,
        val_classes=val_present, mean=float(mean), std=float(std), val_mode=val_mode, seed=seed,
    )
