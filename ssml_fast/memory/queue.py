"""FeatureQueue: a FIFO ring of (embedding, label, sample id) for MoCo negatives and cross-batch memory."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .. import _validation
from .._validation import check_size  # noqa: F401  (re-exported: cross_batch and older imports)
from ..distributed import active_world
from ..neighbors import inner_product_topk

MISSING = -1  # label / id stored for entries enqueued without one


def distributed_world(group) -> int:
    """World size an enqueue must gather over: 1 when torch.distributed is not initialised, and inside
    `ssml_fast.distributed.gathered()` (the rows are already every rank's, e.g. in DistributedLossWrapper)."""
    return active_world(group)


def gathered_row_counts(n: int, device, group=None) -> list[int]:
    """Every rank's row count n_r, in rank order (one all_gather)."""
    mine = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, mine, group=group)
    return [int(s) for s in sizes]


def all_gather_rows(rows: torch.Tensor, group=None, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's rows (n_r, ...) in rank order; the ranks may hold different n_r (`sizes`,
    gathered here when not given)."""
    sizes = gathered_row_counts(rows.shape[0], rows.device, group) if sizes is None else sizes
    longest = max(sizes)
    if longest == 0:  # every rank agrees (same sizes), so all skip the second collective together
        return rows
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class FeatureQueue(nn.Module):
    """Ring buffer of the `size` most recent (embedding, label, id) rows, first-in-first-out.

    Storage is allocated once: `embeddings` (size, dim) in `dtype`, `labels` and `ids` (size,) int64
    (-1 where none was given); one fused ring copy writes all three. `enqueue` accepts any batch size, larger than the queue included (then
    only its last `size` rows remain). Under torch.distributed (initialised, world size > 1, and
    `gather=True`) every enqueue all-gathers the rows of all ranks in rank order, so all ranks hold the
    identical queue; every rank must call enqueue the same number of times. The pointer and fill count
    are part of the state dict, so a resumed run continues bit-identically.
    """

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32, device=None,
                 gather: bool = True, process_group=None, empty_label: int = MISSING):
        super().__init__()
        size, dim = check_size("size", size), check_size("dim", dim)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.register_buffer("embeddings", torch.zeros((size, dim), dtype=dtype, device=device))
        # empty_label: what unused label slots hold (CrossBatchMemory mirrors PML's zero-initialised label_memory)
        self.empty_label = int(empty_label)
        self.register_buffer("labels", torch.full((size,), self.empty_label, dtype=torch.long, device=device))
        self.register_buffer("ids", torch.full((size,), MISSING, dtype=torch.long, device=device))
        self.gather = bool(gather)
        self.process_group = process_group
        self.ptr = 0    # slot the next row goes to = the oldest entry once full
        self.count = 0  # valid entries
        # The caller's rows of the last enqueue went to slots (last_start + arange(last_count)) % size (under
        # torch.distributed: this rank's rows, after the lower ranks'); CrossBatchMemory.curr_batch_idx.
        self.last_start = self.last_count = 0

    @property
    def size(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def __len__(self) -> int:
        return self.count

    @property
    def is_full(self) -> bool:
        return self.count == self.size

    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, ids: torch.Tensor | None = None) -> None:
        """Append embeddings (N, dim) with optional labels (N,) and sample ids (N,) (int); N may be 0 or > size."""
        _validation.check_embeddings("embeddings", embeddings)
        if embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings has dimension {embeddings.shape[1]} but the queue holds {self.dim}")
        device = self.embeddings.device
        if embeddings.device != device:
            raise ValueError(f"embeddings is on {embeddings.device} but the queue is on {device}")
        n = embeddings.shape[0]
        if labels is not None:
            labels = _validation.check_labels("labels", labels, n, device)
        if ids is not None:
            ids = _validation.check_labels("ids", ids, n, device)
        if labels is None or ids is None:
            missing = torch.full((n,), MISSING, dtype=torch.long, device=device)
            labels = missing if labels is None else labels
            ids = missing if ids is None else ids
        rows = [embeddings.detach().to(self.embeddings.dtype), labels, ids]
        ptr, offset, mine = self.ptr, 0, n
        if self.gather and distributed_world(self.process_group) > 1:
            group = self.process_group
            sizes = gathered_row_counts(n, device, group)
            offset = sum(sizes[: dist.get_rank(group)])
            rows = [all_gather_rows(rows[0], group, sizes),
                    *all_gather_rows(torch.stack(rows[1:], 1), group, sizes).unbind(1)]
            n = rows[0].shape[0]
        self.last_start, self.last_count = (ptr + offset) % self.size, mine
        if n == 0:
            return
        # The arguments are checked above; the raw op keeps only its own bounds checks.
        torch.ops.ssml_fast.queue_enqueue_many_([self.embeddings, self.labels, self.ids], rows, ptr)
        self.ptr = (ptr + n) % self.size
        self.count = min(self.count + n, self.size)

    def view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeddings, labels, ids) of the valid entries in storage order, without copying (views of
        the ring: they change on the next enqueue). Oldest-first only while the queue is not full."""
        return self.embeddings[: self.count], self.labels[: self.count], self.ids[: self.count]

    def get(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Copies of the valid (embeddings (n, dim), labels (n,), ids (n,)), oldest first."""
        if not self.is_full:
            return tuple(t[: self.count].clone() for t in (self.embeddings, self.labels, self.ids))
        return tuple(torch.cat([t[self.ptr:], t[: self.ptr]]) for t in (self.embeddings, self.labels, self.ids))

    def reset(self) -> None:
        """Empty the queue (storage is kept)."""
        self.labels.fill_(self.empty_label)
        self.ids.fill_(MISSING)
        self.embeddings.zero_()
        self.ptr = self.count = self.last_start = self.last_count = 0

    @torch.no_grad()
    def topk(self, query: torch.Tensor, k: int, exclude_ids: torch.Tensor | None = None):
        """The k stored entries with the largest inner product with each query row (GEMM + top-k).

        query (Q, dim); exclude_ids (Q,) int: entries carrying the query's own sample id are skipped.
        Returns (scores (Q, k), ids (Q, k), labels (Q, k)). Excluded entries appear (score -inf) only if k
        exceeds what is left.
        """
        _validation.check_embeddings("query", query)
        if query.shape[1] != self.dim:
            raise ValueError(f"query has dimension {query.shape[1]} but the queue holds {self.dim}")
        if query.device != self.embeddings.device:
            raise ValueError(f"query is on {query.device} but the queue is on {self.embeddings.device}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.count:
            raise ValueError(f"k must be an int in [1, {self.count}] (the queue's length), got {k!r}")
        emb, labels, ids = self.view()
        if exclude_ids is not None:
            exclude_ids = _validation.check_labels("exclude_ids", exclude_ids, query.shape[0], query.device)
        scores, rows = inner_product_topk(query.to(emb.dtype), emb, k, exclude_ids, ids)
        return scores, ids[rows], labels[rows]

    def get_extra_state(self):
        return {"ptr": self.ptr, "count": self.count}

    def set_extra_state(self, state):
        ptr, count = int(state["ptr"]), int(state["count"])
        if not (0 <= count <= self.size and 0 <= ptr < self.size and (count == self.size or ptr == count)):
            raise ValueError(f"inconsistent queue state ptr={ptr}, count={count} for size {self.size}")
        self.ptr, self.count = ptr, count
        self.last_start = self.last_count = 0  # which rows were "last" is not part of the state

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, dtype={self.embeddings.dtype}, len={self.count}"
