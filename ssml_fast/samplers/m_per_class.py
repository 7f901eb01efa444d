"""P classes x K samples per batch (the "m per class" sampler of PML, with a deterministic epoch)."""
from __future__ import annotations

from typing import Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

from ..ops._checks import check_int
from ._random import EpochRandom


def _as_label_tensor(labels) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        t = labels.detach().cpu()
    else:
        arr = np.asarray(labels)
        if arr.size == 0:
            raise ValueError("labels is empty")
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"labels must hold integers, got {arr.dtype}")
        t = torch.from_numpy(arr.astype(np.int64, copy=False))
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"labels must hold integers, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError("labels is empty")
    return t.long()


class MPerClassSampler(Sampler[List[int]]):
    """Batch sampler: every batch holds `classes_per_batch` (P) distinct classes x `m` (K) indices each.

    Use as `DataLoader(dataset, batch_sampler=MPerClassSampler(labels, m=4, batch_size=64))`.

    One epoch: each class's indices are shuffled and cut into ceil(n_c / K) chunks of K, the last chunk
    topped up cyclically from the start of the same shuffled list. The epoch has
    B = ceil(sum_c ceil(n_c / K) / P) batches (`len(sampler)`), and a class enters a batch at most once,
    so a class is capped at B chunks (only a class holding more than 1/P of all chunks is capped).
    The B * P class slots left over are filled with extra chunks of random classes that still have
    room, continuing their cyclic order. Hence:
    - every index appears at least once per epoch unless its class was capped;
    - a class with fewer than K samples repeats its samples within the chunk (each floor(K/n_c) or
      ceil(K/n_c) times: the documented "with replacement" rule), so batches may contain duplicates;
    - indices of one class are contiguous in a batch ([c1 x K, c2 x K, ...]).

    Args:
        labels: (N,) integer labels of the dataset (tensor, array or sequence).
        m: K, samples per class in a batch.
        batch_size: P * K; must be a multiple of m. Give this or `classes_per_batch`.
        classes_per_batch: P. Requires at least P distinct classes.
        seed / generator: randomness (see `set_epoch`); the same seed gives the same epochs.
    """

    def __init__(
        self,
        labels,
        m: int,
        batch_size: Optional[int] = None,
        *,
        classes_per_batch: Optional[int] = None,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ):
        labels = _as_label_tensor(labels)
        self.m = check_int("m", m)
        if (batch_size is None) == (classes_per_batch is None):
            raise ValueError("give exactly one of batch_size and classes_per_batch")
        if batch_size is not None:
            batch_size = check_int("batch_size", batch_size)
            if batch_size % self.m:
                raise ValueError(f"batch_size={batch_size} must be a multiple of m={self.m}")
            self.classes_per_batch = batch_size // self.m
        else:
            self.classes_per_batch = check_int("classes_per_batch", classes_per_batch)
        self.batch_size = self.classes_per_batch * self.m
        self.classes, self._class_of, self._counts = torch.unique(labels, return_inverse=True, return_counts=True)
        if len(self.classes) < self.classes_per_batch:
            raise ValueError(
                f"labels has {len(self.classes)} classes but each batch needs classes_per_batch="
                f"{self.classes_per_batch} distinct classes"
            )
        self._chunks = (self._counts + self.m - 1) // self.m
        self._num_batches = int(-(-int(self._chunks.sum()) // self.classes_per_batch))
        self._rng = EpochRandom(seed, generator)

    def __len__(self) -> int:
        return self._num_batches

    def set_epoch(self, epoch: int) -> None:
        """Replay epoch `epoch` on the next pass (seeded mode); later passes continue from it."""
        self._rng.set_epoch(epoch)

    def __iter__(self) -> Iterator[List[int]]:
        yield from self._epoch_batches(self._rng.next()).tolist()

    def _epoch_batches(self, gen: torch.Generator) -> torch.Tensor:
        n_batches, p, k = self._num_batches, self.classes_per_batch, self.m
        counts, n_classes = self._counts, len(self._counts)
        # Shuffle within classes: random order, then a stable sort by class keeps it inside each class.
        perm = torch.randperm(len(self._class_of), generator=gen)
        order = perm[torch.sort(self._class_of[perm], stable=True).indices]
        offsets = torch.cumsum(counts, 0) - counts

        chunks = torch.clamp(self._chunks, max=n_batches)
        extra = n_batches * p - int(chunks.sum())
        while extra > 0:
            spare = torch.nonzero(chunks < n_batches).flatten()
            chosen = spare[torch.randperm(len(spare), generator=gen)[:extra]]
            chunks[chosen] += 1
            extra -= len(chosen)

        # Lay the chunks out class after class (classes in random order) and deal position i to batch
        # i mod B: a class's <= B consecutive chunks land in distinct batches.
        class_order = torch.randperm(n_classes, generator=gen)
        per_class = chunks[class_order]
        chunk_class = torch.repeat_interleave(class_order, per_class)
        first = torch.repeat_interleave(torch.cumsum(per_class, 0) - per_class, per_class)
        chunk_j = torch.arange(len(chunk_class)) - first
        slot = (chunk_j[:, None] * k + torch.arange(k)) % counts[chunk_class][:, None]
        idx = order[offsets[chunk_class][:, None] + slot]
        batches = idx.view(p, n_batches, k).transpose(0, 1).reshape(n_batches, p * k)
        return batches[torch.randperm(n_batches, generator=gen)]
