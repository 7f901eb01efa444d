"""MemoryBank: one L2-normalised slot per training sample, updated by momentum (instance discrimination,
InsCLR), mined by inner-product top-k."""
from __future__ import annotations

import torch
from torch import nn

from .. import _validation
from ..distributed import gather_batch
from ..ops.memory import bank_momentum_update_
from ..neighbors import inner_product_topk


class MemoryBank(nn.Module):
    """`bank` (num_items, dim): slot i holds sample i's feature, allocated once (zeros until updated;
    fill it with `update(all_ids, feats, momentum=0)` before mining).

    update(ids, feats, momentum): bank[id] = normalise(momentum * bank[id] + (1 - momentum) * f) in one
    fused kernel; duplicate ids in one call (two views of an image) use the mean of their features.
    The bank is a registered buffer, so it is in the state dict and moves with `.to()`.
    Under torch.distributed (and `gather=True`) every update applies all ranks' rows in rank order
    (ssml_fast.distributed.gather_batch), so every rank holds the identical bank; a no-op on one process.
    """

    def __init__(self, num_items: int, dim: int, dtype: torch.dtype = torch.float32, device=None,
                 gather: bool = True, process_group=None):
        super().__init__()
        self.gather, self.process_group = bool(gather), process_group
        num_items, dim = _validation.check_size("num_items", num_items), _validation.check_size("dim", dim)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.register_buffer("bank", torch.zeros((num_items, dim), dtype=dtype, device=device))

    @property
    def num_items(self) -> int:
        return self.bank.shape[0]

    @property
    def dim(self) -> int:
        return self.bank.shape[1]

    def __len__(self) -> int:
        return self.num_items

    def update(self, ids: torch.Tensor, feats: torch.Tensor, momentum: float) -> None:
        """ids (B,) int in [0, num_items); feats (B, dim) float; momentum in [0, 1) (0 = overwrite).

        Duplicate ids: f = the mean of their feats rows (deterministic). Rows are stored L2-normalised.
        """
        if self.gather and torch.is_tensor(ids) and torch.is_tensor(feats):
            # Rank order on every rank (identity on one process and inside distributed.gathered()).
            ids, feats = gather_batch(ids, feats.detach(), group=self.process_group)
        bank_momentum_update_(self.bank, ids, feats, momentum)

    @torch.no_grad()
    def topk(self, query: torch.Tensor, k: int, exclude_ids: torch.Tensor | None = None):
        """The k slots with the largest inner product <query, bank[slot]> per query row.

        query (Q, dim) float; exclude_ids (Q,) int: each query's own slot (e.g. its sample id), never
        returned (a negative id excludes nothing). Returns (scores (Q, k) descending, slot ids (Q, k) int64).
        Scores are computed in chunks, so no Q x num_items matrix is allocated.
        """
        _validation.check_embeddings("query", query)
        if query.shape[1] != self.dim:
            raise ValueError(f"query has dimension {query.shape[1]} but the bank holds {self.dim}")
        if query.device != self.bank.device:
            raise ValueError(f"query is on {query.device} but the bank is on {self.bank.device}")
        available = self.num_items - (exclude_ids is not None)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= available:
            raise ValueError(f"k must be an int in [1, {available}], got {k!r}")
        if exclude_ids is not None:
            exclude_ids = _validation.check_labels("exclude_ids", exclude_ids, query.shape[0], query.device)
            if exclude_ids.numel() and int(exclude_ids.max()) >= self.num_items:
                raise ValueError(f"exclude_ids must be < {self.num_items}, got {int(exclude_ids.max())}")
        return inner_product_topk(query.to(self.bank.dtype), self.bank, k, exclude_ids)

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, dim={self.dim}, dtype={self.bank.dtype}"

