"""m samples per class: PML's MPerClassSampler (an index sampler) and a P x K batch sampler with a deterministic epoch."""
from __future__ import annotations

from typing import Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

from .._validation import check_int
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


_OURS = object()  # "not passed": tells our keywords apart from PML's call


class SamplerConfigError(ValueError, AssertionError):
    """An impossible PML-style configuration: a ValueError (our rule) that is also PML's AssertionError."""


class MPerClassSampler(Sampler):
    """m samples per class, in two modes.

    PML mode (`MPerClassSampler(labels, m, batch_size=None, length_before_new_iter=100000)`, PML's
    signature and semantics; the default when none of our keywords below is given): an index sampler for
    `DataLoader(dataset, batch_size=batch_size, sampler=...)`. One pass yields `len(sampler)` indices:
    length_before_new_iter rounded down to a multiple of batch_size (or of m x #classes without a
    batch_size); each block of batch_size indices holds batch_size / m random classes x m samples
    (drawn without replacement, with replacement for a class smaller than m), so every loader batch is
    m per class. Impossible configurations (length_before_new_iter < batch_size, m x #classes <
    batch_size, m not dividing batch_size) raise an error that is both ValueError and AssertionError.

    Batch mode (`batches=True`, or any of classes_per_batch / seed / generator given): a batch sampler,
    `DataLoader(dataset, batch_sampler=MPerClassSampler(labels, m=4, batch_size=64, seed=0))`, with a
    deterministic epoch: every batch holds `classes_per_batch` (P) distinct classes x `m` (K) indices.
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
        batch_size: P * K; must be a multiple of m. (Batch mode: give this or `classes_per_batch`.)
        length_before_new_iter: PML mode, indices per pass.
        classes_per_batch: P (batch mode). Requires at least P distinct classes.
        seed / generator: randomness (see `set_epoch`); the same seed gives the same epochs, in both modes.
        batches: force the mode (True: batch sampler, False: PML index sampler).
    """

    def __init__(
        self,
        labels,
        m: int,
        batch_size: Optional[int] = None,
        length_before_new_iter: int = 100000,
        *,
        classes_per_batch: Optional[int] = _OURS,
        seed: Optional[int] = _OURS,
        generator: Optional[torch.Generator] = _OURS,
        batches: Optional[bool] = None,
    ):
        if batches is None:
            batches = any(v is not _OURS for v in (classes_per_batch, seed, generator))
        classes_per_batch = None if classes_per_batch is _OURS else classes_per_batch
        seed = None if seed is _OURS else seed
        generator = None if generator is _OURS else generator
        labels = _as_label_tensor(labels)
        self.batches = bool(batches)
        self.m = check_int("m", m)
        self.classes, self._class_of, self._counts = torch.unique(labels, return_inverse=True, return_counts=True)
        self._rng = EpochRandom(seed, generator)
        if not self.batches:
            self._init_pml(batch_size, length_before_new_iter, classes_per_batch)
            return
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
        if len(self.classes) < self.classes_per_batch:
            raise ValueError(
                f"labels has {len(self.classes)} classes but each batch needs classes_per_batch="
                f"{self.classes_per_batch} distinct classes"
            )
        self._chunks = (self._counts + self.m - 1) // self.m
        self._num_batches = int(-(-int(self._chunks.sum()) // self.classes_per_batch))

    def _init_pml(self, batch_size, length, classes_per_batch):
        if classes_per_batch is not None:
            raise ValueError("classes_per_batch is a batch-mode argument (batches=True)")
        length = check_int("length_before_new_iter", length)
        single_pass = self.m * len(self.classes)
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size)
        if self.batch_size is None:
            if single_pass < length:
                length -= length % single_pass
            self._block = single_pass
        else:
            if length < self.batch_size:
                raise SamplerConfigError(f"length_before_new_iter={length} must be >= batch_size={self.batch_size}")
            if single_pass < self.batch_size:
                raise SamplerConfigError(f"m * (number of classes) = {single_pass} must be >= batch_size="
                                         f"{self.batch_size}")
            if self.batch_size % self.m:
                raise SamplerConfigError(f"m={self.m} must divide batch_size={self.batch_size}")
            length -= length % self.batch_size
            self._block = self.batch_size
        self.length_before_new_iter = length
        order = torch.argsort(self._class_of, stable=True)
        self._members = torch.split(order, self._counts.tolist())

    def _pml_indices(self, gen: torch.Generator) -> list:
        per_block = self._block // self.m
        n_blocks = max(1, self.length_before_new_iter // self._block)
        out = []
        for _ in range(n_blocks):
            for c in torch.randperm(len(self.classes), generator=gen)[:per_block].tolist():
                members = self._members[c]
                if len(members) >= self.m:
                    pick = members[torch.randperm(len(members), generator=gen)[: self.m]]
                else:  # a class smaller than m: drawn with replacement, as PML's safe_random_choice
                    pick = members[torch.randint(len(members), (self.m,), generator=gen)]
                out.extend(pick.tolist())
        return out[: self.length_before_new_iter]

    def __len__(self) -> int:
        return self._num_batches if self.batches else self.length_before_new_iter

    def set_epoch(self, epoch: int) -> None:
        """Replay epoch `epoch` on the next pass (seeded mode); later passes continue from it."""
        self._rng.set_epoch(epoch)

    def __iter__(self) -> Iterator:
        if not self.batches:
            yield from self._pml_indices(self._rng.next())
            return
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
