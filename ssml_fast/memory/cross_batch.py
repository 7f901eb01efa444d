"""CrossBatchMemory (XBM, Wang et al. 2020; PML's CrossBatchMemory signature): compare each batch against
itself plus a FIFO memory of past batches, through any ssml_fast loss's `ref_emb` / `ref_labels`.

How self pairs are excluded (by sample, never by a similarity threshold): the reference set is
`[batch; memory entries whose id is not in the batch]`. The batch comes first, so anchor i's own row
in the reference is row i, and the only self pair is the diagonal (i, i) of that first block; memory
copies of a sample that is in the batch again are stale versions of it, superseded by the fresh
embedding (each sample appears once in the reference). The batch is enqueued after the loss, so the
memory never holds the current step's rows. Two rows of the batch sharing an id (two views of one
image) are distinct rows and do pair with each other.

The exclusion itself is the loss base class's (`MetricLoss(..., ref_starts_with_batch=True)`): without a
miner every pair of the reference but the self pairs (PML's convention; TripletMarginLoss runs its fused op
with the diagonal excluded instead), with a miner its tuple minus the self pairs. A loss that is not an
loss whose forward does not take `ref_starts_with_batch` (one of PML's, or a subclass that overrides forward)
gets the same pairs as an explicit indices_tuple.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from .. import _validation
from ..losses import _pairs
from ..losses.base import MetricLoss, all_pairs_excluding_self, remove_self_pairs
from .queue import FeatureQueue


def _concat(t1, t2, labels):
    """PML's merge of a mined tuple with the caller's indices_tuple (converted to t1's arity)."""
    if len(t2) == 3 and len(t1) == 4:
        a, p, n = t2
        t2 = (a, p, a, n)
    elif len(t2) == 4 and len(t1) == 3:
        a1, p, a2, n = t2
        pi, ni = torch.where(a1[:, None] == a2[None, :])
        t2 = (a1[pi], p[pi], n[ni])
    return tuple(torch.cat([x, y.to(x.device).long()]) for x, y in zip(t1, t2))


def _takes_ref_starts_with_batch(loss) -> bool:
    """Does loss(...) accept the base class's ref_starts_with_batch keyword (ours, through MetricLoss.forward)?"""
    if not isinstance(loss, MetricLoss):
        return False
    try:
        params = inspect.signature(loss.forward).parameters
    except (TypeError, ValueError):
        return False
    return "ref_starts_with_batch" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class CrossBatchMemory(nn.Module):
    """PML's CrossBatchMemory(loss, embedding_size, memory_size=1024, miner=None): each batch is compared
    against itself plus the most recent embeddings of past batches, `memory_size` rows in all (the batch
    included, as in PML, whose batch overwrites the oldest rows before the loss).

    `xbm(embeddings, labels, indices_tuple=None, enqueue_mask=None, *, ids=None)` -> the loss.
    embeddings (B, D) float, labels (B,) int.
    - ids (ours): (B,) int sample ids >= 0 (-1 = "no id"): memory copies of a sample that is in the batch
      again are stale versions of it and leave the reference (without ids they stay as ordinary entries).
    - enqueue_mask (PML): (B,) bool; the True rows go to the memory (and are part of this step's reference),
      the False rows are the queries; then there are no self pairs to remove.
    - indices_tuple (PML): extra pairs / triplets, merged with the mined (or all) ones; anchors index the
      queries, positives / negatives the reference, whose first rows are the batch (so a tuple mined on the
      batch alone means the batch rows). Not together with enqueue_mask.
    The memory is a FeatureQueue (all-gathered across ranks under torch.distributed), allocated at
    construction when embedding_size is given, else at the first call; it stores `dtype` (default: the
    first batch's dtype, float32 when allocated at construction).
    miner: optional callable `miner(embeddings, labels, ref_emb, ref_labels)` returning PML-style indices.
    See the module docstring for how self pairs are excluded. Gradients flow through the batch as
    anchors; memory entries are constants.
    reference_grad: False (the default) detaches the batch's copy in the reference, as PML (which writes the
      batch into its memory with `.detach()` before the loss reads the memory back) and the XBM paper (whose
      memory features are constants) do: values and gradients are then PML's exactly, so a PML user who swaps
      the import trains the same model. True (ours) also lets the gradient flow through the batch as
      references, which makes the loss equal to the plain loss on [batch; memory] with the memory detached.
    """

    def __init__(self, loss: nn.Module, embedding_size: int | None = None, memory_size: int = 1024, miner=None,
                 *, reference_grad: bool = False, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be a callable loss module, got {type(loss).__name__}")
        self.loss = loss
        self._loss_excludes_self = _takes_ref_starts_with_batch(loss)
        self.memory_size = _validation.check_size("memory_size", memory_size)
        self.miner = miner
        if not isinstance(reference_grad, bool):
            raise TypeError(f"reference_grad must be a bool, got {type(reference_grad).__name__}")
        self.reference_grad = reference_grad
        self.dtype = dtype
        self.register_module("queue", None)
        self.embedding_size = None
        if embedding_size is not None:
            self.embedding_size = _validation.check_size("embedding_size", embedding_size)
            self.queue = FeatureQueue(self.memory_size, self.embedding_size, dtype=dtype or torch.float32,
                                      device=device)

    def _past(self, keep: int):
        """(emb, labels, ids) of the `keep` most recent memory entries."""
        emb, labels, ids = self.queue.view()
        n = emb.shape[0]
        keep = max(0, min(keep, n))
        if keep == n:
            return emb, labels, ids
        # newest entries: the `keep` slots before the write pointer (storage order = age order when not full)
        end = self.queue.ptr if self.queue.is_full else n
        idx = (torch.arange(end - keep, end, device=emb.device) % self.queue.size)
        return emb.index_select(0, idx), labels.index_select(0, idx), ids.index_select(0, idx)

    def reference(self, embeddings, labels, ids=None, keep: int | None = None):
        """(ref_emb, ref_labels) = [embeddings; the newest `keep` (default memory_size - B) memory entries
        whose id is not in `ids`]; rows [0, B) are the embeddings."""
        keep = self.memory_size - embeddings.shape[0] if keep is None else keep
        mem_emb, mem_labels, mem_ids = self._past(keep)
        if ids is not None and mem_ids.numel():
            sel = (~torch.isin(mem_ids, ids)).nonzero().squeeze(1)
            mem_emb, mem_labels = mem_emb.index_select(0, sel), mem_labels.index_select(0, sel)
        batch = embeddings if self.reference_grad else embeddings.detach()
        ref_emb = torch.cat([batch, mem_emb.to(embeddings.dtype)])
        return ref_emb, torch.cat([labels, mem_labels])

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple=None, enqueue_mask=None, *,
                ids: torch.Tensor | None = None):
        _validation.check_embeddings("embeddings", embeddings)
        n = embeddings.shape[0]
        labels = _validation.check_labels("labels", labels, n, embeddings.device)
        if isinstance(indices_tuple, torch.Tensor):
            raise TypeError("indices_tuple must be a tuple of index tensors; pass sample ids as ids=")
        if indices_tuple is not None and enqueue_mask is not None:
            raise ValueError("indices_tuple and enqueue_mask are mutually exclusive")
        if ids is not None:
            ids = _validation.check_labels("ids", ids, n, embeddings.device)
        if enqueue_mask is not None:
            _validation.check_tensor("enqueue_mask", enqueue_mask)
            if enqueue_mask.dtype != torch.bool or enqueue_mask.shape != (n,):
                raise ValueError(f"enqueue_mask must be a bool tensor of shape ({n},), got {enqueue_mask.dtype} "
                                 f"{tuple(enqueue_mask.shape)}")
            enqueue_mask = enqueue_mask.to(embeddings.device)
        n_enq = n if enqueue_mask is None else int(enqueue_mask.sum())
        if n_enq > self.memory_size:
            raise ValueError(f"a batch of {n_enq} rows to enqueue does not fit memory_size={self.memory_size}")
        if self.queue is None:
            self.queue = FeatureQueue(self.memory_size, embeddings.shape[1], dtype=self.dtype or embeddings.dtype,
                                      device=embeddings.device)
            self.embedding_size = embeddings.shape[1]
        elif embeddings.shape[1] != self.queue.dim:
            raise ValueError(f"embeddings have dimension {embeddings.shape[1]} but the memory holds {self.queue.dim}")
        elif embeddings.device != self.queue.embeddings.device:
            raise ValueError(f"embeddings are on {embeddings.device} but the memory is on {self.queue.embeddings.device}")

        # Autocast off: the losses compute in float32 anyway, and the raw triplet op below has no autocast rule.
        with _pairs.autocast_off(embeddings):
            if enqueue_mask is None:
                value = self._self_reference_loss(embeddings, labels, ids, indices_tuple)
                self.queue.enqueue(embeddings.detach(), labels, ids)
            else:
                q, ql = embeddings[~enqueue_mask], labels[~enqueue_mask]
                e, el = embeddings[enqueue_mask], labels[enqueue_mask]
                ref_emb, ref_labels = self.reference(e, el, None if ids is None else ids[enqueue_mask],
                                                     keep=self.memory_size - n_enq)
                if self.miner is not None:
                    value = self.loss(q, ql, self.miner(q, ql, ref_emb, ref_labels), ref_emb, ref_labels)
                else:
                    value = self.loss(q, ql, None, ref_emb, ref_labels)
                self.queue.enqueue(e.detach(), el, None if ids is None else ids[enqueue_mask])
        return value

    def _self_reference_loss(self, embeddings, labels, ids, indices_tuple):
        ref_emb, ref_labels = self.reference(embeddings, labels, ids)
        mined = None if self.miner is None else self.miner(embeddings, labels, ref_emb, ref_labels)
        if indices_tuple is None and self._loss_excludes_self:
            # The loss removes the self pairs (from the mined tuple, or from every pair of the reference).
            return self.loss(embeddings, labels, mined, ref_emb, ref_labels, ref_starts_with_batch=True)
        # PML's order: the self pairs leave the mined (or all) pairs, then the caller's tuple is merged as given.
        indices = remove_self_pairs(mined) if mined is not None else all_pairs_excluding_self(labels, ref_labels)
        if indices_tuple is not None:
            indices = _concat(indices, indices_tuple, labels)
        return self.loss(embeddings, labels, indices, ref_emb, ref_labels)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A memory created lazily (dim=None) is materialised from the checkpoint before its buffers load.
        key = prefix + "queue.embeddings"
        if self.queue is None and key in state_dict:
            size, dim = state_dict[key].shape
            self.queue = FeatureQueue(size, dim, dtype=state_dict[key].dtype, device=state_dict[key].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
