"""Every batch sampler under torch.distributed: the same global batches on every rank, one disjoint shard each.

`DistributedBatchSampler(sampler)` wraps any batch sampler of this package (P x K `MPerClassSampler`
in batch mode, `NearestNeighborBatchSampler`, `CandidatePoolSampler`, `RandomBatchSampler`) or any
iterable of index lists. Every rank builds the *global* sampler with the same seed and epoch, so all
ranks draw the same global batch; rank r keeps the contiguous positions
[r * B // W, (r + 1) * B // W) of it. Hence
- the shards of a step partition the global batch's positions (disjoint, nothing dropped), and their
  concatenation in rank order is the global batch -- what a gathered loss sees, and what one process
  with the same batch size would train on;
- `len()` (steps per epoch) and `set_epoch` are the global sampler's, independent of the world size,
  so schedules, checkpoints and resume do not depend on how many processes run;
- neighbour tables / candidate pools are set on the global sampler (the wrapped one), from embeddings
  gathered across ranks, so they are identical everywhere.
Contiguous shards keep STML's "anchor then its neighbours" tuples and P x K's class blocks together when
the per-rank size is a multiple of the tuple / block size (`aligned` tells).

The batch size in configs is the global batch: `torchrun --nproc_per_node 4` with batch_size 120 trains
on the same 120-image batches as one process, 30 per rank.
"""
from __future__ import annotations

from typing import Iterable, Iterator, List, Optional

from ..distributed import shard_bounds


class DistributedBatchSampler:
    """This rank's shard of each batch of `sampler` (see the module docstring).

    Args:
        sampler: a batch sampler (iterable of index lists; len() = batches per epoch; optional set_epoch).
        rank, world_size: default from torch.distributed (0 and 1 when it is not initialised).
    """

    def __init__(self, sampler: Iterable, rank: Optional[int] = None, world_size: Optional[int] = None):
        from ..distributed import rank as _rank, world_size as _world

        if not hasattr(sampler, "__iter__"):
            raise TypeError(f"sampler must be an iterable batch sampler, got {type(sampler).__name__}")
        if getattr(sampler, "batches", True) is False:
            raise TypeError("sampler is an index sampler (MPerClassSampler in PML mode): give batches=True or "
                            "a batch_size, or shard the DataLoader with torch's DistributedSampler")
        self.sampler = sampler
        self.world_size = _world() if world_size is None else int(world_size)
        self.rank = _rank() if rank is None else int(rank)
        shard_bounds(0, self.rank, self.world_size)  # validates rank / world_size
        size = getattr(sampler, "batch_size", None)
        if size is not None and size < self.world_size:
            raise ValueError(f"batch_size={size} is smaller than the world size {self.world_size}: some rank "
                             "would get an empty shard")
        self.last_global_size = 0
        self.last_offset = 0  # position of this rank's shard in the last global batch (file-backed view seeds)

    @property
    def unit(self) -> int:
        """Size of the blocks a batch is made of: k + 1 (anchor + neighbours), m (P x K), else 1."""
        if hasattr(self.sampler, "anchors_per_batch") and hasattr(self.sampler, "k"):
            return int(self.sampler.k) + 1
        if getattr(self.sampler, "batches", False) and hasattr(self.sampler, "m"):
            return int(self.sampler.m)
        return 1

    @property
    def aligned(self) -> bool:
        """Whether every shard holds whole blocks (tuples / classes) of the global batch."""
        size = getattr(self.sampler, "batch_size", None)
        return size is not None and size % self.world_size == 0 and (size // self.world_size) % self.unit == 0

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def shard(self, batch) -> List[int]:
        start, end = shard_bounds(len(batch), self.rank, self.world_size)
        return list(batch[start:end])

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.sampler:
            self.last_global_size = len(batch)
            if self.world_size == 1:
                self.last_offset = 0
                yield list(batch)
            else:
                self.last_offset = shard_bounds(len(batch), self.rank, self.world_size)[0]
                yield self.shard(batch)
