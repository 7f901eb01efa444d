"""Base class fixing the PML call shape shared by every loss, and PML's distance / reducer / regularizer."""
from __future__ import annotations

import torch
from torch import nn

from .. import _validation
from .. import distances as _distances
from .. import reducers as _reducers
from . import _pairs


def remove_self_pairs(indices_tuple):
    """Drop the pairs / triplets whose positive is the anchor itself (reference row == anchor row), for a
    reference whose first B rows are the batch (PML's remove_self_comparisons for the current batch)."""
    if len(indices_tuple) == 3:
        a, p, n = indices_tuple
        keep = a != p
        return a[keep], p[keep], n[keep]
    if len(indices_tuple) == 4:
        a1, p, a2, n = indices_tuple
        keep = a1 != p
        return a1[keep], p[keep], a2, n
    raise ValueError(f"indices_tuple must hold 3 (triplets) or 4 (pairs) tensors, got {len(indices_tuple)}")


def all_pairs_excluding_self(labels: torch.Tensor, ref_labels: torch.Tensor):
    """(a1, p, a2, n) over a reference whose first B rows are the batch: every positive pair except the self
    pairs (i, i), every negative pair (PML's get_all_pairs_indices then remove_self_comparisons)."""
    same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
    pos = same.clone()
    pos[:, : labels.shape[0]].fill_diagonal_(False)
    a1, p = pos.nonzero(as_tuple=True)
    a2, n = (~same).nonzero(as_tuple=True)
    return a1, p, a2, n


class MetricLoss(nn.Module):
    """`loss(embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None, *,
    ref_starts_with_batch=False)`.

    embeddings: (B, D) float; labels: (B,) int. ref_emb (R, D) / ref_labels (R,): compare the batch
    against this reference set (cross-batch memory) instead of itself; `ref_emb is embeddings` (or None)
    means the batch itself, and then a sample is never paired with itself. indices_tuple: mined pairs
    (a1, p, a2, n) or triplets (a, p, n), as PML miners return them; validated here for every loss
    (1-D integer tensors, anchors in [0, B), positives / negatives in [0, R)).
    ref_starts_with_batch (ours): rows [0, B) of ref_emb are the batch itself (a cross-batch memory's
      reference [batch; memory]), so reference row i is anchor i: the self pairs (i, i) are removed from
      the indices_tuple, and without one the loss runs `compute_loss_ref_starts_with_batch`, by default
      over every pair of the reference except the self pairs (PML's CrossBatchMemory convention); a loss
      with a fused form of it (TripletMarginLoss: the op's diagonal exclusion) overrides that method.
      This is how CrossBatchMemory works with any loss.

    PML's loss arguments, accepted by every subclass that takes them:
      distance: a distance object (ssml_fast.distances or PML's own) or one of our strings;
      reducer: a reducer object (ssml_fast.reducers or PML's own). The loss's default one (and Mean / Sum /
        AvgNonZero where the loss implements them) runs in the loss's fused path; any other reducer gets
        PML's per-element loss_dict;
      embedding_regularizer (e.g. regularizers.LpRegularizer()), times embedding_reg_weight, is added to
        the loss (computed on the embeddings as given).
    Rules shared by every loss:
      - an empty batch (B = 0) or an empty reference set (R = 0) gives a finite 0 with zero gradients,
        connected to the inputs (and the loss's parameters) so `.backward()` works;
      - the loss is computed with autocast disabled, in float32 for half-precision inputs (float64 stays
        float64), and returned in that dtype.
    Subclasses implement `compute_loss` with the validated arguments; `ref_emb`/`ref_labels` reach it
    as None for the self-reference case, and B, R >= 1. `supports_ref_emb = False` makes the base reject a
    separate reference set.
    """

    requires_labels = True
    supports_ref_emb = True

    def __init__(self, distance=None, reducer=None, embedding_regularizer=None, embedding_reg_weight=1.0,
                 *, distance_strings: dict | None = None):
        super().__init__()
        self.distance = _distances.resolve(distance, self.default_distance, strings=distance_strings)
        if reducer is not None and not callable(reducer):
            raise TypeError(f"reducer must be a reducer object (e.g. ssml_fast.reducers.MeanReducer()), "
                            f"got {type(reducer).__name__}")
        self.reducer = self.default_reducer() if reducer is None else reducer
        if embedding_regularizer is not None and not callable(embedding_regularizer):
            raise TypeError(f"embedding_regularizer must be callable, got {type(embedding_regularizer).__name__}")
        self.embedding_regularizer = embedding_regularizer
        self.embedding_reg_weight = _pairs.check_real("embedding_reg_weight", embedding_reg_weight)

    def default_distance(self):
        return _distances.LpDistance()

    def default_reducer(self):
        return _reducers.MeanReducer()

    @property
    def reduction_kind(self) -> str | None:
        """"mean_nonzero" / "mean" / "sum" when the reducer is one the fused paths implement."""
        return _reducers.kind(self.reducer)

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None, *,
                ref_starts_with_batch: bool = False):
        _validation.check_embeddings("embeddings", embeddings)
        if ref_emb is not None and ref_emb is not embeddings and not self.supports_ref_emb:
            raise ValueError(self._no_ref_emb_message())
        if not isinstance(ref_starts_with_batch, bool):
            raise TypeError(f"ref_starts_with_batch must be a bool, got {type(ref_starts_with_batch).__name__}")
        if ref_starts_with_batch and (ref_emb is None or ref_emb is embeddings):
            ref_starts_with_batch = False  # the batch is the whole reference: the usual self-reference case
        needs_ref_labels = (self.requires_labels or ref_starts_with_batch) and indices_tuple is None
        ref_emb, ref_labels = _validation.resolve_reference(embeddings, labels, ref_emb, ref_labels,
                                                            needs_ref_labels)
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        if ref_starts_with_batch and R < B:
            raise ValueError(f"ref_starts_with_batch=True but ref_emb has {R} rows, fewer than the batch's {B}")
        if labels is not None:
            labels = _validation.check_labels("labels", labels, B, embeddings.device)
        elif (self.requires_labels or ref_starts_with_batch) and indices_tuple is None:
            raise ValueError(f"{type(self).__name__} needs labels (or an indices_tuple)")
        if indices_tuple is not None:
            indices_tuple = _pairs.check_indices_tuple(indices_tuple, B, R, embeddings.device)
            if ref_starts_with_batch:
                indices_tuple = remove_self_pairs(indices_tuple)
        if B == 0 or R == 0:
            return self.empty_loss(embeddings, ref_emb)
        with _pairs.autocast_off(embeddings):
            if ref_starts_with_batch and indices_tuple is None:
                out = self.compute_loss_ref_starts_with_batch(embeddings, labels, ref_emb, ref_labels)
            else:
                out = self.compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
            if self.embedding_regularizer is not None:
                out = self._add_regularization(out, embeddings)
        return out

    def _add_regularization(self, out, embeddings):
        reg = self.embedding_regularizer(embeddings.to(_validation.compute_dtype(embeddings))) * self.embedding_reg_weight
        if isinstance(out, dict):  # DoNothingReducer: the unreduced loss_dict, as PML returns it
            out["embedding_reg_loss"] = {"losses": reg, "indices": None, "reduction_type": "already_reduced"}
            return out
        return out + reg

    def reduce(self, loss_dict: dict, embeddings, labels):
        """PML's reduction of a loss_dict with self.reducer: every sub-loss reduced on its own and summed
        (a MultipleReducers or DoNothingReducer gets the whole dict). Entries whose losses are the number 0
        (nothing to compute) give our connected zero."""
        name = type(self.reducer).__name__
        if name in ("MultipleReducers", "DoNothingReducer"):
            return self.reducer(loss_dict, embeddings, labels)
        total = None
        for key, info in loss_dict.items():
            if not torch.is_tensor(info["losses"]):
                v = _pairs.zero_loss(embeddings, *self.parameters())
            else:
                v = self.reducer({key: info}, embeddings, labels)
            total = v if total is None else total + v
        return total

    def matrix(self, embeddings, ref_emb):
        """self.distance(embeddings, ref_emb) (ref None: the batch itself), in the compute dtype."""
        return _distances.matrix(self.distance, embeddings, ref_emb)

    def empty_loss(self, embeddings, ref_emb) -> torch.Tensor:
        """The loss of an empty batch or reference: 0, with zero gradients for the inputs and parameters."""
        return _pairs.zero_loss(embeddings, ref_emb, *self.parameters())

    def _no_ref_emb_message(self) -> str:
        return f"{type(self).__name__} does not support ref_emb"

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> torch.Tensor:
        raise NotImplementedError

    def compute_loss_ref_starts_with_batch(self, embeddings, labels, ref_emb, ref_labels) -> torch.Tensor:
        """The loss against a reference whose first B rows are the batch, without an indices_tuple: by default
        every pair over the reference except the self pairs (PML's CrossBatchMemory convention). Overridden
        by losses with a fused form (the same value, without materialising the B x R pair list)."""
        indices = all_pairs_excluding_self(labels, ref_labels)
        indices = _pairs.check_indices_tuple(indices, embeddings.shape[0], ref_emb.shape[0], embeddings.device)
        return self.compute_loss(embeddings, labels, indices, ref_emb, ref_labels)
