"""BaseMiner: `miner(embeddings, labels, ref_emb=None, ref_labels=None)` -> index tuple (PML shapes)."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import _checks


class BaseMiner(nn.Module):
    """Returns int64 index tensors: triplets (a, p, n) or pairs (a1, p, a2, n); a / a1 / a2 index the
    embeddings, p / n the reference set (the embeddings themselves unless ref_emb is given). Mining runs
    without gradient; feed the result to a loss as `indices_tuple`. Subclasses implement `mine`, which
    receives ref_emb / ref_labels as None in the self-reference case (then a sample never pairs with itself).
    """

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        _checks.check_embeddings("embeddings", embeddings)
        labels = _checks.check_labels("labels", labels, embeddings.shape[0], embeddings.device)
        if ref_emb is embeddings:
            ref_emb = None
        if ref_emb is None:
            if ref_labels is not None and ref_labels is not labels:
                raise ValueError("ref_labels was given without ref_emb")
            ref_labels = None
        else:
            _checks.check_embeddings("ref_emb", ref_emb)
            _checks.check_same_dim("ref_emb", embeddings, ref_emb)
            _checks.check_same_device("ref_emb", ref_emb, embeddings.device)
            if ref_labels is None:
                raise ValueError("ref_labels is required when ref_emb is given")
            ref_labels = _checks.check_labels("ref_labels", ref_labels, ref_emb.shape[0], embeddings.device)
        with torch.no_grad():
            return self.mine(embeddings.detach(), labels, None if ref_emb is None else ref_emb.detach(),
                             ref_labels)

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        raise NotImplementedError


def empty_tuple(n: int, device) -> tuple:
    return tuple(torch.empty(0, dtype=torch.long, device=device) for _ in range(n))
