"""File-backed datasets: lists of image paths with labels, and their open-set train / val / test split.

The in-memory datasets (`ImageSplit`) hold decoded tensors; real datasets (CUB, Cars196, SOP, In-Shop,
GLDv2, image folders) are too large for that, so their split holds `ImageFiles` in the same fields
(`train_images`, `val_images`, `test_images`). `ImageFiles` is decoded lazily in DataLoader workers
(`ssml_fast.data.pipeline`): the trainer and `embed_images` recognise it and stream it.

Images are decoded with PIL and converted to RGB; the pipelines give float tensors in [0, 1] and the trunk
normalises them (ssml_fast.models): pretrained weights with the statistics they were trained with, a
network from scratch with the split's `mean` / `std`, here the ImageNet statistics averaged over the
channels (0.449 / 0.226: one number, as the small CNN takes).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_GREY_MEAN = 0.449  # channel means of the two above
IMAGENET_GREY_STD = 0.226
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
# Checking that every listed file exists costs one stat per file: for the million-image sets a sample.
_EXISTENCE_CHECK_LIMIT = 200_000


class DatasetError(ValueError):
    """A dataset on disk is missing or malformed; the message names the file expected and where."""


def missing(what: str, path: Path, layout: str) -> DatasetError:
    return DatasetError(f"{what}: expected {path} ({layout})")


def check_files_exist(paths: Sequence[Path], listed_in: Path, seed: int = 0) -> None:
    """Every path (or a 10,000-path sample of a very large list) must be a file; names the first missing."""
    check = paths
    if len(paths) > _EXISTENCE_CHECK_LIMIT:
        check = random.Random(seed).sample(list(paths), 10_000)
    for p in check:
        if not os.path.isfile(p):
            raise DatasetError(f"image {p} listed in {listed_in} does not exist (is the dataset fully extracted "
                               f"under {listed_in.parent}?)")


@dataclass
class ImageFiles:
    """Paths (and labels) of images decoded lazily, in DataLoader workers.

    `boxes[i]` (x1, y1, x2, y2) crops image i before any transform (rOxford / rParis queries);
    `gallery_mask` marks the gallery of a query / gallery test set (In-Shop): True = gallery image.
    `eval_pipeline` is the name of the evaluation transform (`ssml_fast.data.transforms`), `image_size`
    its crop; `num_workers` / `pin_memory` configure the DataLoaders that read these files.
    """

    paths: list
    labels: torch.Tensor
    image_size: int = 224
    resize: int = 256
    eval_pipeline: str = "eval"
    boxes: Optional[list] = None
    gallery_mask: Optional[torch.Tensor] = None
    num_workers: int = 0
    pin_memory: bool = False

    def __post_init__(self):
        if len(self.paths) != len(self.labels):
            raise ValueError(f"paths has {len(self.paths)} entries but labels has {len(self.labels)}")
        if self.boxes is not None and len(self.boxes) != len(self.paths):
            raise ValueError(f"boxes has {len(self.boxes)} entries but paths has {len(self.paths)}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        """A slice / index list / index tensor -> the `ImageFiles` of those images (sharding code slices
        image sets); an int -> that image for display: (3, S, S) float in [0, 1], its evaluation crop
        without the normalisation (report grids)."""
        if isinstance(index, slice):
            return self.subset(range(len(self.paths))[index])
        if isinstance(index, torch.Tensor) and index.dim() == 0:
            index = int(index)
        if isinstance(index, int):
            from .transforms import build_transform, eval_spec

            return build_transform(eval_spec(self))(self.open(index))
        return self.subset(torch.as_tensor(index, dtype=torch.long).tolist())

    @property
    def shape(self) -> tuple:
        """(N, 3, S, S): what a tensor of these images would be after the evaluation transform."""
        return (len(self.paths), 3, self.image_size, self.image_size)

    def open(self, i: int):
        """Image i as an RGB PIL image, cropped to its box if it has one."""
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
        if self.boxes is not None and self.boxes[i] is not None:
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i])
            im = im.crop((int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2))))
        return im

    def subset(self, index: Sequence[int]) -> "ImageFiles":
        index = list(index)
        return replace(self, paths=[self.paths[i] for i in index], labels=self.labels[torch.as_tensor(index, dtype=torch.long)],
                       boxes=None if self.boxes is None else [self.boxes[i] for i in index],
                       gallery_mask=None if self.gallery_mask is None
                       else self.gallery_mask[torch.as_tensor(index, dtype=torch.long)])

    def with_loader(self, num_workers: int, pin_memory: bool) -> "ImageFiles":
        return replace(self, num_workers=num_workers, pin_memory=pin_memory)

    def to(self, device) -> "ImageFiles":
        """Files stay on disk; `to` exists so code written for tensors (`split.to(device)`) keeps working."""
        return self


@dataclass
class FileSplit:
    """An open-set split of a file-backed dataset; the fields mirror `ImageSplit` with `ImageFiles` images.

    `pipeline` names the training pipeline family ("official": each method's official augmentation,
    "thesis": the thesis's Resize(256 x 256) + RandomCrop + flip for every method).
    """

    name: str
    root: str
    train_images: ImageFiles
    train_labels: torch.Tensor
    test_images: ImageFiles
    test_labels: torch.Tensor
    val_images: ImageFiles
    val_labels: torch.Tensor
    train_classes: list
    test_classes: list
    val_classes: list
    mean: float = IMAGENET_GREY_MEAN
    std: float = IMAGENET_GREY_STD
    val_mode: str = "samples"
    seed: int = 0
    pipeline: str = "official"
    extras: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.train_images.image_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def to(self, device) -> "FileSplit":
        return self

    def with_loader(self, num_workers: int = 0, pin_memory: bool = False) -> "FileSplit":
        """A copy whose image lists are read with `num_workers` DataLoader workers (and pinned memory)."""
        return replace(self, **{k: getattr(self, k).with_loader(num_workers, pin_memory)
                                for k in ("train_images", "val_images", "test_images")})

    def describe(self) -> str:
        gallery = self.test_images.gallery_mask
        test = (f"test {len(self.test_labels)} images of {len(self.test_classes)} classes"
                + (f" ({int((~gallery).sum())} queries, {int(gallery.sum())} gallery)" if gallery is not None else ""))
        return (f"{self.name} ({self.root}): train {len(self.train_labels)} images of {len(self.train_classes)} "
                f"classes, val {len(self.val_labels)} ({self.val_mode}, {len(self.val_classes)} classes), {test}; "
                f"{self.pipeline} pipeline, crops {self.image_shape}")


def file_split(
    name: str,
    root,
    train_paths: Sequence,
    train_labels: Sequence[int],
    test_paths: Sequence,
    test_labels: Sequence[int],
    *,
    test_gallery: Optional[Sequence[bool]] = None,
    val_mode: str = "samples",
    val_fraction: float = 0.1,
    val_classes: Optional[Sequence[int]] = None,
    seed: int = 0,
    image_size: int = 224,
    resize: int = 256,
    pipeline: str = "official",
    extras: Optional[dict] = None,
) -> FileSplit:
    """The standard class-disjoint split of a dataset (train part, test part) plus a validation carve.

    Validation comes from the training classes with exactly `split_by_class`'s rules (val_mode
    samples / classes / none); the test part is the dataset's standard test part, unchanged.
    """
    from .splits import split_by_class

    for arg, v in (("image_size", image_size), ("resize", resize)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 8:
            raise ValueError(f"{arg} must be an int >= 8, got {v!r}")
    if pipeline not in ("official", "thesis"):
        raise ValueError(f"pipeline must be official or thesis, got {pipeline!r}")
    if len(train_paths) != len(train_labels) or len(test_paths) != len(test_labels):
        raise ValueError("paths and labels differ in length")
    if not train_paths:
        raise DatasetError(f"{name}: no training images found under {root}")
    tr_y = torch.as_tensor(list(train_labels), dtype=torch.long)
    te_y = torch.as_tensor(list(test_labels), dtype=torch.long)
    overlap = set(tr_y.tolist()) & set(te_y.tolist())
    if overlap:
        raise DatasetError(f"{name}: classes {sorted(overlap)[:5]} are in both the train and the test part under "
                           f"{root}; the standard splits are class-disjoint")
    train_classes = sorted(set(tr_y.tolist()))
    n_tr = len(tr_y)
    if len(te_y):
        # split_by_class on the row indices gives the validation carve with the trainer's usual rules.
        labels = torch.cat([tr_y, te_y])
        rows = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1)
        s = split_by_class(rows, labels, train_classes, name=name, mean=0.0, std=1.0, val_mode=val_mode,
                           val_fraction=val_fraction, val_classes=val_classes, seed=seed)
        tr_rows, va_rows = s.train_images.view(-1).long(), s.val_images.view(-1).long()
        fit_classes, held = s.train_classes, s.val_classes
    else:  # a training-only dataset (GLDv2): it is evaluated on rOxford5k / rParis6k
        labels = tr_y
        fake_test = max(train_classes) + 1
        rows = torch.arange(n_tr + 1, dtype=torch.float32).view(-1, 1, 1, 1)
        s = split_by_class(rows, torch.cat([tr_y, torch.tensor([fake_test])]), train_classes, name=name,
                           mean=0.0, std=1.0, val_mode=val_mode, val_fraction=val_fraction,
                           val_classes=val_classes, seed=seed)
        tr_rows, va_rows = s.train_images.view(-1).long(), s.val_images.view(-1).long()
        fit_classes, held = s.train_classes, s.val_classes
    paths = [str(p) for p in list(train_paths) + list(test_paths)]
    gallery = None if test_gallery is None else torch.as_tensor(list(test_gallery), dtype=torch.bool)
    base = ImageFiles(paths, labels, image_size=image_size, resize=resize,
                      eval_pipeline="thesis_eval" if pipeline == "thesis" else "eval")

    def part(rows: torch.Tensor) -> ImageFiles:
        return base.subset(rows.tolist())

    test_rows = list(range(n_tr, n_tr + len(te_y)))
    test = part(torch.tensor(test_rows, dtype=torch.long))
    if gallery is not None:
        test.gallery_mask = gallery
    train, val = part(tr_rows), part(va_rows)
    return FileSplit(name=name, root=str(root), train_images=train, train_labels=train.labels,
                     test_images=test, test_labels=test.labels, val_images=val, val_labels=val.labels,
                     train_classes=list(fit_classes), test_classes=sorted(set(te_y.tolist())),
                     val_classes=list(held), val_mode=val_mode, seed=seed, pipeline=pipeline,
                     extras=dict(extras or {}))


def as_root(root, dataset: str) -> Path:
    """`root` as an existing directory, or an error naming the argument."""
    if root is None:
        raise ValueError(f"dataset {dataset!r} is read from disk: pass its directory (--data-root / root=)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"--data-root {path} is not a directory (dataset {dataset!r})")
    return path


def read_lines(path: Path, layout: str) -> list[str]:
    if not path.is_file():
        raise missing("file not found", path, layout)
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip()]
