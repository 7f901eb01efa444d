"""BaseMiner: `miner(embeddings, labels, ref_emb=None, ref_labels=None)` -> index tuple (PML shapes)."""
from __future__ import annotations

import torch
from torch import nn

from .. import distances as _distances
from ..losses import _pairs
from .. import _validation as _checks


class BaseMiner(nn.Module):
    """Returns int64 index tensors: triplets (a, p, n) or pairs (a1, p, a2, n) (`tuple_size` 3 or 4);
    a / a1 / a2 index the embeddings, p / n the reference set (the embeddings themselves unless ref_emb is
    given). distance: a distance object (ssml_fast.distances or PML's own) or a string shortcut; PML's
    default LpDistance() (L2-normalised embeddings) unless a miner says otherwise. Mining runs without gradient and with autocast disabled (in float32 for half inputs); feed the
    result to a loss as `indices_tuple`. An empty batch or reference gives `tuple_size` empty int64
    tensors on the embeddings' device. Subclasses implement `mine`, which receives B, R >= 1 and
    ref_emb / ref_labels as None in the self-reference case (then a sample never pairs with itself).
    """

    tuple_size = 3

    def __init__(self, distance=None, *, distance_strings: dict | None = None):
        super().__init__()
        self.distance = _distances.resolve(distance, self.default_distance, strings=distance_strings)

    def default_distance(self):
        return _distances.LpDistance()

    def matrix(self, embeddings, ref_emb):
        """self.distance(embeddings, ref_emb) (ref None: the batch itself)."""
        return _distances.matrix(self.distance, embeddings, ref_emb)

    def distance_matrix(self, embeddings, ref_emb):
        """The matrix oriented as a distance (smaller = closer): a similarity is negated."""
        m = self.matrix(embeddings, ref_emb)
        return -m if self.distance.is_inverted else m

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        _checks.check_embeddings("embeddings", embeddings)
        ref_emb, ref_labels = _checks.resolve_reference(embeddings, labels, ref_emb, ref_labels)
        labels = _checks.check_labels("labels", labels, embeddings.shape[0], embeddings.device)
        if embeddings.shape[0] == 0 or (ref_emb is not None and ref_emb.shape[0] == 0):
            return empty_tuple(self.tuple_size, embeddings.device)
        with torch.no_grad(), _pairs.autocast_off(embeddings):
            return self.mine(embeddings.detach(), labels, None if ref_emb is None else ref_emb.detach(),
                             ref_labels)

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        raise NotImplementedError


def empty_tuple(n: int, device) -> tuple:
    return tuple(torch.empty(0, dtype=torch.long, device=device) for _ in range(n))
