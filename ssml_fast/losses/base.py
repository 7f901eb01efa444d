"""Base class fixing the PML call shape shared by every loss."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import _checks
from . import _pairs


class MetricLoss(nn.Module):
    """`loss(embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None)`.

    embeddings: (B, D) float; labels: (B,) int. ref_emb (R, D) / ref_labels (R,): compare the batch
    against this reference set (cross-batch memory) instead of itself; `ref_emb is embeddings` (or None)
    means the batch itself, and then a sample is never paired with itself. indices_tuple: mined pairs
    (a1, p, a2, n) or triplets (a, p, n), as PML miners return them; validated here for every loss
    (1-D integer tensors, anchors in [0, B), positives / negatives in [0, R)).
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

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        _checks.check_embeddings("embeddings", embeddings)
        if ref_emb is not None and ref_emb is not embeddings and not self.supports_ref_emb:
            raise ValueError(self._no_ref_emb_message())
        needs_ref_labels = self.requires_labels and indices_tuple is None
        ref_emb, ref_labels = _checks.resolve_reference(embeddings, labels, ref_emb, ref_labels, needs_ref_labels)
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        if labels is not None:
            labels = _checks.check_labels("labels", labels, B, embeddings.device)
        elif self.requires_labels and indices_tuple is None:
            raise ValueError(f"{type(self).__name__} needs labels (or an indices_tuple)")
        if indices_tuple is not None:
            indices_tuple = _pairs.check_indices_tuple(indices_tuple, B, R, embeddings.device)
        if B == 0 or R == 0:
            return self.empty_loss(embeddings, ref_emb)
        with _pairs.autocast_off(embeddings):
            return self.compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def empty_loss(self, embeddings, ref_emb) -> torch.Tensor:
        """The loss of an empty batch or reference: 0, with zero gradients for the inputs and parameters."""
        return _pairs.zero_loss(embeddings, ref_emb, *self.parameters())

    def _no_ref_emb_message(self) -> str:
        return f"{type(self).__name__} does not support ref_emb"

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> torch.Tensor:
        raise NotImplementedError
