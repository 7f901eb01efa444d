"""Base class fixing the PML call shape shared by every loss."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import _checks


class MetricLoss(nn.Module):
    """`loss(embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None)`.

    embeddings: (B, D) float; labels: (B,) int. ref_emb (R, D) / ref_labels (R,): compare the batch
    against this reference set (cross-batch memory) instead of itself; `ref_emb is embeddings` (or None)
    means the batch itself, and then a sample is never paired with itself. indices_tuple: mined pairs
    (a1, p, a2, n) or triplets (a, p, n), as PML miners return them.
    Subclasses implement `compute_loss` with the validated arguments; `ref_emb`/`ref_labels` reach it
    as None for the self-reference case.
    """

    requires_labels = True

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        _checks.check_embeddings("embeddings", embeddings)
        needs_ref_labels = self.requires_labels and indices_tuple is None
        ref_emb, ref_labels = _checks.resolve_reference(embeddings, labels, ref_emb, ref_labels, needs_ref_labels)
        if labels is not None:
            labels = _checks.check_labels("labels", labels, embeddings.shape[0], embeddings.device)
        elif self.requires_labels and indices_tuple is None:
            raise ValueError(f"{type(self).__name__} needs labels (or an indices_tuple)")
        return self.compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> torch.Tensor:
        raise NotImplementedError
