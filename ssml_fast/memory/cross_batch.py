"""CrossBatchMemory (XBM, Wang et al. 2020): compare each batch against itself plus a FIFO memory of
past batches, through any ssml_fast loss's `ref_emb` / `ref_labels`.

How self pairs are excluded (by sample, never by a similarity threshold): the reference set is
`[batch; memory entries whose id is not in the batch]`. The batch comes first, so anchor i's own row
in the reference is row i, and the only self pair is the diagonal (i, i) of that first block; memory
copies of a sample that is in the batch again are stale versions of it, superseded by the fresh
embedding (each sample appears once in the reference). The batch is enqueued after the loss, so the
memory never holds the current step's rows. Two rows of the batch sharing an id (two views of one
image) are distinct rows and do pair with each other.

The loss then sees the diagonal-excluded reference as follows:
- TripletMarginLoss (no miner): the fused op with its `exclude_diagonal` flag; batch-all / hard /
  semihard mining run over the whole reference, exactly as on a plain batch.
- With a `miner`: it mines (embeddings, labels, ref_emb, ref_labels); pairs / triplets whose positive is
  the anchor itself are dropped before the loss sees them.
- Any other loss: all pairs (a1, p, a2, n) over the reference minus the self pairs, PML's convention.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..losses import TripletMarginLoss, _pairs
from ..ops import _checks
from .queue import FeatureQueue, check_size


def remove_self_pairs(indices_tuple):
    """Drop the pairs / triplets whose positive is the anchor itself (reference row == anchor row)."""
    if len(indices_tuple) == 3:
        a, p, n = indices_tuple
        keep = a != p
        return a[keep], p[keep], n[keep]
    if len(indices_tuple) == 4:
        a1, p, a2, n = indices_tuple
        keep = a1 != p
        return a1[keep], p[keep], a2, n
    raise ValueError(f"indices_tuple must hold 3 (triplets) or 4 (pairs) tensors, got {len(indices_tuple)}")


def all_pairs_without_self(labels: torch.Tensor, ref_labels: torch.Tensor):
    """(a1, p, a2, n): every positive pair except (i, i), every negative pair."""
    same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
    pos = same.clone()
    pos.diagonal().fill_(False)  # the batch is the first block of the reference
    a1, p = pos.nonzero(as_tuple=True)
    a2, n = (~same).nonzero(as_tuple=True)
    return a1, p, a2, n


def triplet_excluding_diagonal(loss: TripletMarginLoss, emb, labels, ref_emb, ref_labels) -> torch.Tensor:
    """TripletMarginLoss over a reference whose first rows are the batch: the fused op's exclude_diagonal."""
    dist = ops.pairwise_distance(emb, ref_emb, loss.distance)
    value, active, total, _ = torch.ops.ssml_fast.triplet_margin_loss_from_dist(
        dist, labels, ref_labels, True, loss.margin, loss.mining, loss.reduction, loss.soft
    )
    loss.num_active, loss.num_triplets = active, total
    return value


class CrossBatchMemory(nn.Module):
    """Wraps `loss` so each batch is compared against batch + the last `size` embeddings of past batches.

    `xbm(embeddings, labels, ids=None)` -> the loss. embeddings (B, D) float, labels (B,) int, ids (B,) int
    sample ids >= 0 (-1 marks "no id" in the memory; optional: without them memory copies of a repeated
    sample are not recognised and stay in the reference as ordinary entries). The memory is a FeatureQueue (all-gathered across ranks under
    torch.distributed), allocated once at the first call, or at construction when `dim` is given; it
    stores `dtype` (default: the first batch's dtype, float32 when allocated at construction).
    miner: optional callable `miner(embeddings, labels, ref_emb, ref_labels)` returning PML-style indices.
    See the module docstring for how self pairs are excluded. Gradients flow through the batch (as
    anchors and as references); memory entries are constants.
    """

    def __init__(self, loss: nn.Module, size: int, dim: int | None = None, miner=None,
                 dtype: torch.dtype | None = None, device=None):
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be a callable loss module, got {type(loss).__name__}")
        self.loss = loss
        self.size = check_size("size", size)
        self.miner = miner
        self.dtype = dtype
        self.register_module("queue", None)
        if dim is not None:
            self.queue = FeatureQueue(size, check_size("dim", dim), dtype=dtype or torch.float32, device=device)

    def reference(self, embeddings, labels, ids=None):
        """(ref_emb, ref_labels) = [batch; memory entries whose id is not in `ids`]; rows [0, B) are the batch."""
        mem_emb, mem_labels, mem_ids = self.queue.view()
        if ids is not None and mem_ids.numel():
            keep = (~torch.isin(mem_ids, ids)).nonzero().squeeze(1)
            mem_emb, mem_labels = mem_emb.index_select(0, keep), mem_labels.index_select(0, keep)
        ref_emb = torch.cat([embeddings, mem_emb.to(embeddings.dtype)])
        return ref_emb, torch.cat([labels, mem_labels])

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor | None = None):
        _checks.check_embeddings("embeddings", embeddings)
        n = embeddings.shape[0]
        labels = _checks.check_labels("labels", labels, n, embeddings.device)
        if ids is not None:
            ids = _checks.check_labels("ids", ids, n, embeddings.device)
        if self.queue is None:
            self.queue = FeatureQueue(self.size, embeddings.shape[1], dtype=self.dtype or embeddings.dtype,
                                      device=embeddings.device)
        elif embeddings.shape[1] != self.queue.dim:
            raise ValueError(f"embeddings have dimension {embeddings.shape[1]} but the memory holds {self.queue.dim}")
        elif embeddings.device != self.queue.embeddings.device:
            raise ValueError(f"embeddings are on {embeddings.device} but the memory is on {self.queue.embeddings.device}")

        ref_emb, ref_labels = self.reference(embeddings, labels, ids)
        # Autocast off: the losses compute in float32 anyway, and the raw triplet op below has no autocast rule.
        with _pairs.autocast_off(embeddings):
            if self.miner is not None:
                indices = remove_self_pairs(self.miner(embeddings, labels, ref_emb, ref_labels))
                value = self.loss(embeddings, labels, indices, ref_emb, ref_labels)
            elif isinstance(self.loss, TripletMarginLoss):
                value = triplet_excluding_diagonal(self.loss, embeddings, labels, ref_emb, ref_labels)
            else:
                value = self.loss(embeddings, labels, all_pairs_without_self(labels, ref_labels), ref_emb, ref_labels)
        self.queue.enqueue(embeddings.detach(), labels, ids)
        return value

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A memory created lazily (dim=None) is materialised from the checkpoint before its buffers load.
        key = prefix + "queue.embeddings"
        if self.queue is None and key in state_dict:
            size, dim = state_dict[key].shape
            self.queue = FeatureQueue(size, dim, dtype=state_dict[key].dtype, device=state_dict[key].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
