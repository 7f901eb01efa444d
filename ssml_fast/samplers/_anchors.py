"""Shared machinery of the anchor + neighbours batch samplers (STML / InsCLR style batches)."""
from __future__ import annotations

from typing import Iterator, List, Optional

import torch
from torch.utils.data import Sampler

from .._validation import check_int
from ._random import EpochRandom


class AnchorBatchSampler(Sampler[List[int]]):
    """Batches of `anchors_per_batch` anchors, each followed by its `k` neighbours.

    Batch layout (size q * (k + 1)): [a_1, n_1^1 .. n_1^k, a_2, n_2^1 .., ...], neighbours most similar
    first, so position i belongs to the tuple of anchor i // (k + 1). Anchors are drawn without
    replacement within an epoch (a fresh random permutation, continued by another if the epoch needs
    more anchors than samples). Neighbours are not deduplicated: two tuples can share a sample, as in
    the STML / InsCLR samplers. Subclasses supply `_neighbours(anchors) -> (q, k) int64`.
    """

    def __init__(
        self,
        num_samples: int,
        anchors_per_batch: int,
        k: int,
        num_batches: Optional[int],
        seed: Optional[int],
        generator: Optional[torch.Generator],
    ):
        self.num_samples = check_int("num_samples", num_samples)
        self.anchors_per_batch = check_int("anchors_per_batch", anchors_per_batch)
        self.k = check_int("k", k)
        if self.k >= self.num_samples:
            raise ValueError(f"k={self.k} neighbours need more than num_samples={self.num_samples} samples")
        self.batch_size = self.anchors_per_batch * (self.k + 1)
        if num_batches is None:
            num_batches = max(1, self.num_samples // self.batch_size)
        self.num_batches = check_int("num_batches", num_batches)
        self._rng = EpochRandom(seed, generator)

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Replay epoch `epoch` on the next pass (seeded mode); later passes continue from it."""
        self._rng.set_epoch(epoch)

    def _check_rows(self, name: str, t: torch.Tensor) -> None:
        if t.shape[0] != self.num_samples:
            raise ValueError(f"{name} has {t.shape[0]} rows but the sampler has num_samples={self.num_samples}")

    def _neighbours(self, anchors: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __iter__(self) -> Iterator[List[int]]:
        self._require_ready()
        gen = self._rng.next()
        needed = self.num_batches * self.anchors_per_batch
        perms = [torch.randperm(self.num_samples, generator=gen) for _ in range(-(-needed // self.num_samples))]
        anchors = torch.cat(perms)[:needed].view(self.num_batches, self.anchors_per_batch)
        for a in anchors:
            yield torch.cat([a[:, None], self._neighbours(a)], dim=1).reshape(-1).tolist()

    def _require_ready(self) -> None:
        raise NotImplementedError
