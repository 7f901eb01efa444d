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
        ref_emb, ref_labels = _checks.resolve_reference(embeddings, labels, ref_emb, ref_labels)
        labels = _checks.check_labels("labels", labels, embeddings.shape[0], embeddings.device)
        with torch.no_grad():
            return self.mine(embeddings.detach(), labels, None if ref_emb is None else ref_emb.detach(),
                             ref_labels)

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        raise NotImplementedError


def empty_tuple(n: int, device) -> tuple:
    return tuple(torch.empty(0, dtype=torch.long, device=device) for _ in range(n))
