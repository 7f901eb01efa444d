"""Embedding a list of image files in batches: memory is bounded by the batch, never by the folder.

A DataLoader over the *paths* decodes and transforms images in its workers; each batch is embedded and
handed to the caller, which writes it out (the index's float16 vector file) before the next one is
decoded. At any time the process holds at most the batches in flight: the one being embedded plus the
loader's prefetch (num_workers x prefetch_factor batches; none with num_workers=0).

Unreadable files (not an image, truncated, a decompression bomb) are skipped: the batch carries their
paths and the reasons, and the caller reports them (`ssml-fast index` prints one warning line each).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .images import EvalTransform, open_image


class ImagePathDataset(Dataset):
    """Item i: (i, image tensor) or (i, the error text) when paths[i] cannot be read."""

    def __init__(self, paths: Sequence[os.PathLike | str], transform: EvalTransform):
        self.paths = [str(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, open_image(self.paths[i], self.transform)
        except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
            return i, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


@dataclass
class ImageBatch:
    indices: list           # positions (into the path list) of the images in `images`
    images: torch.Tensor    # (B, C, H, W) float32 in [0, 1]
    failed: list = field(default_factory=list)   # (position, reason) of the unreadable files


def _collate(items) -> ImageBatch:
    good = [(i, x) for i, x in items if torch.is_tensor(x)]
    failed = [(i, x) for i, x in items if not torch.is_tensor(x)]
    images = torch.stack([x for _, x in good]) if good else torch.zeros(0)
    return ImageBatch([i for i, _ in good], images, failed)


def image_batches(dataset: Dataset, batch_size: int = 64, num_workers: int = 0) -> Iterator[ImageBatch]:
    """The dataset's items in order, `batch_size` at a time, decoded by `num_workers` worker processes."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate, prefetch_factor=2 if num_workers else None,
                        persistent_workers=False)
    yield from loader


def progress(total: int, desc: str, enabled: bool | None = None):
    """A tqdm bar on stderr when it is a terminal (or `enabled`), else a no-op object with update()."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
        except ImportError:
            pass

    class _Silent:
        def update(self, n=1):
            pass

        def close(self):
            pass

    return _Silent()


@torch.no_grad()
def embed_batches(embed: Callable[[torch.Tensor], torch.Tensor], batches: Iterator[ImageBatch], device,
                  normalize: bool, total: int, show_progress: bool | None = None, desc: str = "embedding"):
    """Yields (positions, (B, D) float32 numpy embeddings, failed) per batch; L2-normalised if `normalize`."""
    bar = progress(total, desc, show_progress)
    try:
        for batch in batches:
            if batch.indices:
                emb = embed(batch.images.to(device)).float()
                if normalize:
                    emb = torch.nn.functional.normalize(emb, dim=1)
                out = emb.cpu().numpy()
                if not np.isfinite(out).all():
                    raise ValueError("the model produced NaN or infinite embeddings")
            else:
                out = np.zeros((0, 0), np.float32)
            bar.update(len(batch.indices) + len(batch.failed))
            yield batch.indices, out, batch.failed
    finally:
        bar.close()


def embed_paths(method, paths: Sequence[Path | str], transform: EvalTransform, *, device="cpu",
                normalize: bool = True, batch_size: int = 64, num_workers: int = 0,
                show_progress: bool | None = None, desc: str = "embedding"):
    """Streams (positions, embeddings, failed) for `paths` through `method.embed` in eval mode."""
    method.eval()
    dataset = ImagePathDataset(paths, transform)
    yield from embed_batches(method.embed, image_batches(dataset, batch_size, num_workers), device, normalize,
                             len(dataset), show_progress, desc)
