"""Shuffled fixed-size batches of dataset indices, replayable per epoch (the default batch sampler)."""
from __future__ import annotations

from typing import Iterator, List, Optional

import torch
from torch.utils.data import Sampler

from .._validation import check_int
from ._random import EpochRandom


class RandomBatchSampler(Sampler[List[int]]):
    """Each epoch, a random permutation of range(num_samples) cut into batches of `batch_size`.

    `drop_last` (default True) drops the final partial batch, so every step sees the same batch size
    (losses such as Spreading and NT-Xent compare rows within a batch). Epoch e is a fixed function of
    (seed, e): `set_epoch(e)` replays it, which is how the trainer resumes mid-run.
    """

    def __init__(self, num_samples: int, batch_size: int, *, drop_last: bool = True,
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None):
        self.num_samples = check_int("num_samples", num_samples)
        self.batch_size = check_int("batch_size", batch_size)
        if drop_last and self.batch_size > self.num_samples:
            raise ValueError(f"batch_size={self.batch_size} is larger than the {self.num_samples} samples "
                             "(drop_last would leave no batch)")
        self.drop_last = bool(drop_last)
        self._rng = EpochRandom(seed, generator)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        self._rng.set_epoch(epoch)

    def __iter__(self) -> Iterator[List[int]]:
        perm = torch.randperm(self.num_samples, generator=self._rng.next())
        for i in range(len(self)):
            yield perm[i * self.batch_size:(i + 1) * self.batch_size].tolist()
