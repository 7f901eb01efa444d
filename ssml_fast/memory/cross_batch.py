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
with the diagonal excluded instead), with a miner its tuple minus the self pairs. A loss whose forward does
not take `ref_starts_with_batch` (one of PML's, or a subclass that overrides forward), and our per-pair
LiftedStructureLoss (PML's form reads reference row numbers as batch row numbers, so its value depends on
where the batch sits in the reference), get PML's own layout and pairs (below).

PML's public surface is kept on top of that layout: `embedding_memory` / `label_memory` are the queue's
own buffers (storage order, the full memory_size rows), `queue_idx` / `has_been_filled` its pointer and
fill state, `curr_batch_idx` the slots the last batch went to, `add_to_memory`, `create_indices_tuple`
(in PML's slot coordinates), `reset_queue`, `supported_losses` / `check_loss_support`. A caller's
indices_tuple names PML's slots too (the memory after this batch is written, the batch at
curr_batch_idx): with one, or with a loss named above, the reference is built in PML's slot layout
(the memory with the batch copied in at curr_batch_idx, out of place) and the pairs are PML's exactly.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from .. import _validation
from ..losses import _pairs
from ..losses.base import MetricLoss
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


def remove_self_comparisons(indices_tuple, curr_batch_idx: torch.Tensor):
    """PML's lmu.remove_self_comparisons for a memory the batch was written to at slots curr_batch_idx:
    drop the pairs / triplets whose positive is the anchor's own slot, p == curr_batch_idx[a] (PML's
    offset arithmetic, without its batch-of-one case that keeps the self pair). Anchors past the
    batch (none in CrossBatchMemory's own use) are never self pairs."""
    if len(indices_tuple) not in (3, 4):
        raise ValueError(f"indices_tuple must hold 3 (triplets) or 4 (pairs) tensors, got {len(indices_tuple)}")
    a, p = indices_tuple[0], indices_tuple[1]
    if curr_batch_idx is None or curr_batch_idx.numel() == 0:
        return tuple(indices_tuple)
    nb = curr_batch_idx.shape[0]
    own = curr_batch_idx.to(p.device)[a.clamp(0, nb - 1)]
    keep = (p != own) | (a >= nb)
    if len(indices_tuple) == 3:
        return a[keep], p[keep], indices_tuple[2][keep]
    return a[keep], p[keep], indices_tuple[2], indices_tuple[3]


def _check_slot_tuple(indices_tuple, n_slots: int, n_anchors: int):
    """A caller's tuple: anchors in [0, B), positives / negatives memory slots in [0, n_slots)."""
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        raise ValueError("indices_tuple must be a tuple of 3 (a, p, n) or 4 (a1, p, a2, n) index tensors")
    t = list(indices_tuple)
    anchors, refs = (t[:1], t[1:]) if len(t) == 3 else (t[0::2], t[1::2])
    for x, bound, what in [(x, n_anchors, "anchor") for x in anchors] + [(x, n_slots, "memory slot") for x in refs]:
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= bound):
            raise ValueError(f"indices_tuple has {what} indices outside [0, {bound})")


def _drop_refs(indices_tuple, dropped: torch.Tensor):
    """Remove the pairs / triplets whose positive or negative is a reference row flagged in `dropped`."""
    t = [x.to(dropped.device).long() for x in indices_tuple]
    if len(t) == 3:
        keep = ~(dropped[t[1]] | dropped[t[2]])
        return t[0][keep], t[1][keep], t[2][keep]
    kp, kn = ~dropped[t[1]], ~dropped[t[3]]
    return t[0][kp], t[1][kp], t[2][kn], t[3][kn]


def _reads_reference_row_numbers(loss) -> bool:
    """Does the loss's value depend on the reference's row numbering, not just on its rows? Our per-pair
    LiftedStructureLoss follows PML's (the negatives of positive j are the pairs whose anchor index equals
    j's reference index), so under a memory it must see PML's slot layout to give PML's numbers."""
    from ..losses.lifted_structure_loss import LiftedStructureLoss

    return isinstance(loss, LiftedStructureLoss) and not loss.generalized


def _takes_ref_starts_with_batch(loss) -> bool:
    """Does loss(...) accept the base class's ref_starts_with_batch keyword (ours, through MetricLoss.forward)?"""
    if not isinstance(loss, MetricLoss):
        return False
    try:
        params = inspect.signature(loss.forward).parameters
    except (TypeError, ValueError):
        return False
    return "ref_starts_with_batch" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


# PML's CrossBatchMemory.supported_losses(): the losses it accepts (ours runs any loss taking ref_emb).
_PML_SUPPORTED = ("AngularLoss", "CircleLoss", "ContrastiveLoss", "GeneralizedLiftedStructureLoss",
                  "IntraPairVarianceLoss", "LiftedStructureLoss", "MarginLoss", "MultiSimilarityLoss", "NCALoss",
                  "NTXentLoss", "SignalToNoiseRatioContrastiveLoss", "SupConLoss", "TripletMarginLoss",
                  "TupletMarginLoss")


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
    - indices_tuple (PML): extra pairs / triplets, merged after the mined (or all) ones lost their self
      pairs. As in PML, anchors index the batch and positives / negatives name memory slots: rows of
      `embedding_memory` once this batch is written to it, at `curr_batch_idx` = (queue_idx + arange(B)) %
      memory_size (a tuple mined on the batch alone thus names slots 0..B-1, the batch only on the first
      call, as in PML). Pairs naming a stale copy left out by ids are dropped. Not with enqueue_mask.
      Under torch.distributed the slots are this process's view (its batch right after queue_idx).
    The memory is a FeatureQueue (all-gathered across ranks under torch.distributed), allocated at
    construction when embedding_size is given, else at the first call. It moves to the batch's device if
    they differ (PML's behaviour); it stores `dtype`, or, by default, the dtype of the batch that finds it
    empty (the first one, or the first after reset_queue; so a float64 run keeps float64 rows, as PML's).
    miner: optional callable `miner(embeddings, labels, ref_emb, ref_labels)` returning PML-style indices.
    See the module docstring for how self pairs are excluded. Gradients flow through the batch as
    anchors; memory entries are constants.
    reference_grad: False (the default) detaches the batch's copy in the reference, as PML (which writes the
      batch into its memory with `.detach()` before the loss reads the memory back) and the XBM paper (whose
      memory features are constants) do: values and gradients are then PML's exactly, so a PML user who swaps
      the import trains the same model. True (ours) also lets the gradient flow through the batch as
      references, which makes the loss equal to the plain loss on [batch; memory] with the memory detached.

    PML's attributes, views of the queue (never copies): embedding_memory (memory_size, D) and label_memory
    (memory_size,) are its buffers in storage order (unused label slots hold 0, as PML's), queue_idx its
    write pointer, has_been_filled whether it has wrapped, curr_batch_idx the slots of the last batch
    written; add_to_memory, create_indices_tuple, reset_queue, supported_losses and check_loss_support
    behave as PML's (the constructor does not restrict the loss to supported_losses()).
    """

    def __init__(self, loss: nn.Module, embedding_size: int | None = None, memory_size: int = 1024, miner=None,
                 *, reference_grad: bool = False, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be a callable loss module, got {type(loss).__name__}")
        self.loss = loss
        # Our batch-first reference (the loss removes the self pairs), or PML's slot layout (module docstring).
        self._batch_first = _takes_ref_starts_with_batch(loss) and not _reads_reference_row_numbers(loss)
        self.memory_size = _validation.check_size("memory_size", memory_size)
        self.miner = miner
        if not isinstance(reference_grad, bool):
            raise TypeError(f"reference_grad must be a bool, got {type(reference_grad).__name__}")
        self.reference_grad = reference_grad
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        self.dtype = dtype
        self.register_module("queue", None)
        self.embedding_size = None
        if embedding_size is not None:
            self.embedding_size = _validation.check_size("embedding_size", embedding_size)
            self.queue = self._new_queue(self.embedding_size, dtype or torch.float32, device)

    def _new_queue(self, dim, dtype, device):
        return FeatureQueue(self.memory_size, dim, dtype=dtype, device=device, empty_label=0)

    # ------------------------------------------------------------------ PML's surface (views of the queue)

    @staticmethod
    def supported_losses():
        return list(_PML_SUPPORTED)

    @classmethod
    def check_loss_support(cls, loss_name):
        if loss_name not in cls.supported_losses():
            raise ValueError(f"CrossBatchMemory not supported for {loss_name}")

    @property
    def embedding_memory(self):
        return None if self.queue is None else self.queue.embeddings

    @embedding_memory.setter
    def embedding_memory(self, value):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() != 2 \
                or value.shape[0] != self.memory_size or (self.queue is not None and value.shape[1] != self.queue.dim):
            want = f"({self.memory_size}, {'D' if self.queue is None else self.queue.dim})"
            raise ValueError(f"embedding_memory must be a floating tensor of shape {want}, got "
                             f"{getattr(value, 'dtype', type(value).__name__)} {tuple(getattr(value, 'shape', ()))}")
        if self.queue is None:
            self.queue = self._new_queue(value.shape[1], value.dtype, value.device)
            self.embedding_size = value.shape[1]
        self.queue.embeddings = value.detach().contiguous()  # the ring op writes it in place

    @property
    def label_memory(self):
        return None if self.queue is None else self.queue.labels

    @label_memory.setter
    def label_memory(self, value):
        if self.queue is None:
            raise ValueError("label_memory: the memory is not allocated yet (no embedding_size, no call)")
        if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.shape != (self.memory_size,):
            raise ValueError(f"label_memory must be an integer tensor of shape ({self.memory_size},), got "
                             f"{getattr(value, 'dtype', type(value).__name__)} {tuple(getattr(value, 'shape', ()))}")
        self.queue.labels = value.detach().long().contiguous()

    @property
    def queue_idx(self) -> int:
        return 0 if self.queue is None else self.queue.ptr

    @property
    def has_been_filled(self) -> bool:
        return self.queue is not None and self.queue.is_full

    @property
    def curr_batch_idx(self) -> torch.Tensor:
        """Slots (B,) the last batch written went to (empty before the first)."""
        if self.queue is None:
            return torch.empty(0, dtype=torch.long)
        q = self.queue
        return (q.last_start + torch.arange(q.last_count, device=q.embeddings.device)) % q.size

    def add_to_memory(self, embeddings, labels, batch_size=None, *, ids=None):
        """PML's add_to_memory: write the rows (detached) to the memory; curr_batch_idx = their slots."""
        _validation.check_embeddings("embeddings", embeddings)
        if batch_size is not None and batch_size != embeddings.shape[0]:
            raise ValueError(f"batch_size={batch_size} but embeddings has {embeddings.shape[0]} rows")
        self._ensure_memory(embeddings)
        self.queue.enqueue(embeddings.detach(), labels, ids)

    def reset_queue(self):
        """Empty the memory (PML's reset_queue: zero embeddings and labels, queue_idx 0); storage is kept."""
        if self.queue is not None:
            self.queue.reset()

    def create_indices_tuple(self, embeddings, labels, E_mem, L_mem, input_indices_tuple,
                             do_remove_self_comparisons):
        """PML's create_indices_tuple, in its coordinates (E_mem = the memory with this batch written at
        curr_batch_idx): mined or all pairs against (E_mem, L_mem), minus the self comparisons, then the
        input tuple (converted to the same arity) appended."""
        if self.miner is not None:
            indices = self.miner(embeddings, labels, E_mem, L_mem)
        else:
            same = labels.unsqueeze(1) == L_mem.to(labels.device).unsqueeze(0)
            indices = (*torch.where(same), *torch.where(~same))
        if do_remove_self_comparisons:
            indices = remove_self_comparisons(indices, self.curr_batch_idx)
        if input_indices_tuple is not None:
            indices = _concat(indices, input_indices_tuple, labels)
        return indices

    # ------------------------------------------------------------------ the loss

    def _ensure_memory(self, embeddings):
        """Allocate the memory at the first call; follow the batch's device (PML) and, while empty and no
        dtype was given, its dtype."""
        if self.queue is None:
            self.queue = self._new_queue(embeddings.shape[1], self.dtype or embeddings.dtype, embeddings.device)
            self.embedding_size = embeddings.shape[1]
            return
        q = self.queue
        if embeddings.shape[1] != q.dim:
            raise ValueError(f"embeddings have dimension {embeddings.shape[1]} but the memory holds {q.dim}")
        if any(b.device != embeddings.device for b in (q.embeddings, q.labels, q.ids)):
            q.to(embeddings.device)
        if self.dtype is None and len(q) == 0 and q.embeddings.dtype != embeddings.dtype:
            q.embeddings = q.embeddings.to(embeddings.dtype)

    def _past(self, keep: int):
        """(emb, labels, ids, slots) of the `keep` most recent memory entries; slots None = all, in storage order."""
        emb, labels, ids = self.queue.view()
        n = emb.shape[0]
        keep = max(0, min(keep, n))
        if keep == n:
            return emb, labels, ids, None
        # newest entries: the `keep` slots before the write pointer (storage order = age order when not full)
        end = self.queue.ptr if self.queue.is_full else n
        idx = (torch.arange(end - keep, end, device=emb.device) % self.queue.size)
        return emb.index_select(0, idx), labels.index_select(0, idx), ids.index_select(0, idx), idx

    def _reference(self, embeddings, labels, ids=None, keep: int | None = None):
        """(ref_emb, ref_labels, slots): the reference and the memory slot of each of its memory rows."""
        keep = self.memory_size - embeddings.shape[0] if keep is None else keep
        mem_emb, mem_labels, mem_ids, slots = self._past(keep)
        if ids is not None and mem_ids.numel():
            sel = (~torch.isin(mem_ids, ids)).nonzero().squeeze(1)
            mem_emb, mem_labels = mem_emb.index_select(0, sel), mem_labels.index_select(0, sel)
            slots = sel if slots is None else slots.index_select(0, sel)
        if slots is None:
            slots = torch.arange(mem_emb.shape[0], device=mem_emb.device)
        batch = embeddings if self.reference_grad else embeddings.detach()
        ref_emb = torch.cat([batch, mem_emb.to(embeddings.dtype)])
        return ref_emb, torch.cat([labels, mem_labels]), slots

    def reference(self, embeddings, labels, ids=None, keep: int | None = None):
        """(ref_emb, ref_labels) = [embeddings; the newest `keep` (default memory_size - B) memory entries
        whose id is not in `ids`]; rows [0, B) are the embeddings."""
        return self._reference(embeddings, labels, ids, keep)[:2]

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
        self._ensure_memory(embeddings)

        # Autocast off: the losses compute in float32 anyway, and the raw triplet op below has no autocast rule.
        with _pairs.autocast_off(embeddings):
            if enqueue_mask is None:
                if indices_tuple is None and self._batch_first:
                    value = self._batch_first_loss(embeddings, labels, ids)
                else:
                    value = self._pml_layout_loss(embeddings, labels, embeddings, labels, ids, indices_tuple,
                                                  remove_self=True)
                self.queue.enqueue(embeddings.detach(), labels, ids)
            else:
                q, ql = embeddings[~enqueue_mask], labels[~enqueue_mask]
                e, el = embeddings[enqueue_mask], labels[enqueue_mask]
                e_ids = None if ids is None else ids[enqueue_mask]
                if self._batch_first:
                    ref_emb, ref_labels = self.reference(e, el, e_ids, keep=self.memory_size - n_enq)
                    mined = None if self.miner is None else self.miner(q, ql, ref_emb, ref_labels)
                    value = self.loss(q, ql, mined, ref_emb, ref_labels)
                else:
                    value = self._pml_layout_loss(q, ql, e, el, e_ids, None, remove_self=False)
                self.queue.enqueue(e.detach(), el, e_ids)
        return value

    def _batch_first_loss(self, embeddings, labels, ids):
        """Ours: reference [batch; memory], the loss removes the self pairs (from the mined tuple, or from
        every pair of the reference)."""
        ref_emb, ref_labels = self.reference(embeddings, labels, ids)
        mined = None if self.miner is None else self.miner(embeddings, labels, ref_emb, ref_labels)
        return self.loss(embeddings, labels, mined, ref_emb, ref_labels, ref_starts_with_batch=True)

    def _pml_layout_loss(self, queries, query_labels, rows, row_labels, ids, indices_tuple, remove_self):
        """PML's own layout (module docstring): the reference is the memory as it is once `rows` (the batch,
        or its enqueue_mask rows) are written at the next slots (out of place: the queue is written after
        the loss), the mined (or all) pairs of the queries lose the self comparisons (remove_self: the
        queries are the rows), then the caller's tuple (in slot coordinates) is merged; with ids (those of
        `rows`), pairs naming a stale memory copy of one of the rows are dropped."""
        q, b, nq = self.queue, rows.shape[0], queries.shape[0]
        n_ref = min(q.count + b, q.size)
        if indices_tuple is not None:
            _check_slot_tuple(indices_tuple, n_ref, nq)
        slots = (q.ptr + torch.arange(b, device=q.embeddings.device)) % q.size
        batch = rows if self.reference_grad else rows.detach()
        ref_emb = q.embeddings[:n_ref].to(rows.dtype).index_copy(0, slots, batch)
        ref_labels = q.labels[:n_ref].index_copy(0, slots, row_labels)
        if self.miner is not None:
            indices = self.miner(queries, query_labels, ref_emb, ref_labels)
        else:
            same = query_labels.unsqueeze(1) == ref_labels.unsqueeze(0)
            indices = (*torch.where(same), *torch.where(~same))
        if remove_self:
            indices = remove_self_comparisons(indices, slots)
        if indices_tuple is not None:
            indices = _concat(indices, indices_tuple, query_labels)
        if ids is not None:
            stale = torch.isin(q.ids[:n_ref], ids)
            stale[slots] = False
            indices = _drop_refs(indices, stale)
        return self.loss(queries, query_labels, indices, ref_emb, ref_labels)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A memory created lazily (dim=None) is materialised from the checkpoint before its buffers load.
        key = prefix + "queue.embeddings"
        if self.queue is None and key in state_dict:
            size, dim = state_dict[key].shape
            self.queue = self._new_queue(dim, state_dict[key].dtype, state_dict[key].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
