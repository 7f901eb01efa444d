"""Distances with PML's call shape: `dist(query (B, D), ref (R, D) = None) -> (B, R)`.

LpDistance / CosineSimilarity / DotProductSimilarity have pytorch-metric-learning's constructor
arguments, attributes (`normalize_embeddings`, `p`, `power`, `is_inverted`) and helpers (`margin`,
`smallest_dist`, `largest_dist`, `normalize`, `maybe_normalize`, `get_norm`, `pairwise_distance`), so
PML code that builds them works unchanged; p = 2 matrices come from the fused `ops.pairwise_distance`.
CosineDistance (1 - cos, not inverted) is ours: what the string `distance="cosine"` means in the losses.
Every loss and miner also accepts PML's own distance objects (see `resolve`, `fused_metric`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .. import _validation as _checks

__all__ = ["BaseDistance", "LpDistance", "CosineSimilarity", "DotProductSimilarity", "CosineDistance",
           "resolve", "fused_metric", "MahalanobisMetric"]


class BaseDistance(nn.Module):
    """PML's BaseDistance semantics: optional Lp-normalisation of both sides, `compute_mat`, then the
    matrix to `power`. `is_inverted=True` marks a similarity (larger = closer)."""

    def __init__(self, normalize_embeddings: bool = True, p: float = 2, power: float = 1,
                 is_inverted: bool = False):
        super().__init__()
        self.normalize_embeddings = bool(normalize_embeddings)
        self.p = p
        self.power = power
        self.is_inverted = bool(is_inverted)

    def forward(self, query_emb: torch.Tensor, ref_emb: torch.Tensor | None = None) -> torch.Tensor:
        self.check_shapes(query_emb, ref_emb)
        q = self.maybe_normalize(query_emb)
        # ref None (or the query itself) is passed on as None: the fused op then gives an exact 0 diagonal
        r = None if ref_emb is None or ref_emb is query_emb else self.maybe_normalize(ref_emb)
        mat = self.compute_mat(q, r)
        if self.power != 1:
            mat = mat ** self.power
        return mat

    def compute_mat(self, query_emb, ref_emb):
        raise NotImplementedError

    def pairwise_distance(self, query_emb, ref_emb):
        raise NotImplementedError

    def smallest_dist(self, *args, **kwargs):
        return torch.max(*args, **kwargs) if self.is_inverted else torch.min(*args, **kwargs)

    def largest_dist(self, *args, **kwargs):
        return torch.min(*args, **kwargs) if self.is_inverted else torch.max(*args, **kwargs)

    def margin(self, x, y):
        """How far x is beyond y in the "farther" direction (y - x for a similarity)."""
        return y - x if self.is_inverted else x - y

    def normalize(self, embeddings, dim=1, **kwargs):
        return F.normalize(embeddings, p=self.p, dim=dim, **kwargs)

    def maybe_normalize(self, embeddings, dim=1, **kwargs):
        return self.normalize(embeddings, dim=dim, **kwargs) if self.normalize_embeddings else embeddings

    def get_norm(self, embeddings, dim=1, **kwargs):
        return torch.norm(embeddings, p=self.p, dim=dim, **kwargs)

    def check_shapes(self, query_emb, ref_emb):
        if query_emb.ndim != 2 or (ref_emb is not None and ref_emb.ndim != 2):
            raise ValueError("embeddings must be a 2D tensor of shape (batch_size, embedding_size)")

    def extra_repr(self):
        return f"normalize_embeddings={self.normalize_embeddings}, p={self.p}, power={self.power}"


class LpDistance(BaseDistance):
    """||x - y||_p (to `power`); p = 2 through the fused distance op, power 2 as the squared distance."""

    def __init__(self, normalize_embeddings: bool = True, p: float = 2, power: float = 1, is_inverted=False):
        if is_inverted:
            raise ValueError("LpDistance is a distance: is_inverted must be False")
        super().__init__(normalize_embeddings, p, power, False)

    def forward(self, query_emb, ref_emb=None):
        if self.p == 2 and self.power == 2:
            # the squared distance straight from the op (no sqrt then square: exact 0 and finite gradients)
            self.check_shapes(query_emb, ref_emb)
            q = self.maybe_normalize(query_emb)
            r = None if ref_emb is None or ref_emb is query_emb else self.maybe_normalize(ref_emb)
            return ops.pairwise_distance(q, r, "sqeuclidean")
        return super().forward(query_emb, ref_emb)

    def compute_mat(self, query_emb, ref_emb):
        if self.p == 2:
            return ops.pairwise_distance(query_emb, ref_emb, "euclidean")
        dtype = _checks.compute_dtype(query_emb)
        ref = query_emb if ref_emb is None else ref_emb
        return torch.cdist(query_emb.to(dtype), ref.to(dtype), p=self.p)

    def pairwise_distance(self, query_emb, ref_emb):
        return F.pairwise_distance(query_emb, ref_emb, p=self.p)


class DotProductSimilarity(BaseDistance):
    """x . y (after Lp-normalisation when normalize_embeddings, PML's default: then it is the cosine)."""

    def __init__(self, normalize_embeddings: bool = True, p: float = 2, power: float = 1, is_inverted=True):
        if not is_inverted:
            raise ValueError(f"{type(self).__name__} is a similarity: is_inverted must be True")
        super().__init__(normalize_embeddings, p, power, True)

    def compute_mat(self, query_emb, ref_emb):
        dtype = _checks.compute_dtype(query_emb)
        q = query_emb.to(dtype)
        return q @ (q if ref_emb is None else ref_emb.to(dtype)).transpose(-1, -2)

    def pairwise_distance(self, query_emb, ref_emb):
        return torch.sum(query_emb * ref_emb, dim=1)


class CosineSimilarity(DotProductSimilarity):
    """cos(x, y): the dot product of L2-normalised embeddings (normalize_embeddings is always True)."""

    def __init__(self, p: float = 2, power: float = 1, normalize_embeddings=True, is_inverted=True):
        if not normalize_embeddings:
            raise ValueError("CosineSimilarity always normalises: normalize_embeddings must be True")
        super().__init__(True, p, power, is_inverted)


class CosineDistance(BaseDistance):
    """1 - cos(x, y), a distance (not inverted): the meaning of the string `distance="cosine"`, so the
    margins of our string API keep their sense. Not in PML."""

    def __init__(self, power: float = 1):
        super().__init__(normalize_embeddings=False, p=2, power=power, is_inverted=False)

    def compute_mat(self, query_emb, ref_emb):
        return ops.pairwise_distance(query_emb, ref_emb, "cosine")

    def pairwise_distance(self, query_emb, ref_emb):
        return 1 - F.cosine_similarity(query_emb, ref_emb, dim=1)


_STRINGS = {
    "euclidean": lambda: LpDistance(normalize_embeddings=False),
    "sqeuclidean": lambda: LpDistance(normalize_embeddings=False, power=2),
    "cosine": CosineDistance,
}
_SIMILARITY_STRINGS = {"cosine": CosineSimilarity, "dot": lambda: DotProductSimilarity(normalize_embeddings=False)}


def resolve(value, default, name: str = "distance", strings: dict | None = None):
    """A distance object from `value`: None -> default(), a string shortcut, or any object with PML's
    distance interface (ours or PML's own: callable with `is_inverted`)."""
    if value is None:
        return default()
    if isinstance(value, str):
        table = _STRINGS if strings is None else strings
        _checks.check_choice(name, value, table)
        return table[value]()
    if not callable(value) or not hasattr(value, "is_inverted"):
        raise TypeError(f"{name} must be a distance object (e.g. ssml_fast.distances.LpDistance()) or one of "
                        f"{', '.join(map(repr, strings or _STRINGS))}, got {type(value).__name__}")
    return value


def similarity_strings() -> dict:
    return dict(_SIMILARITY_STRINGS)


def _kind(d) -> str | None:
    """The class name of a distance whose matrix we know how to compute: our own classes exactly, or PML's
    (by module and name, without importing PML); a subclass may override compute_mat, so it is not known."""
    t = type(d)
    if t in (LpDistance, CosineSimilarity, DotProductSimilarity, CosineDistance):
        return t.__name__
    if t.__module__.startswith("pytorch_metric_learning.distances") and \
            t.__name__ in ("LpDistance", "CosineSimilarity", "DotProductSimilarity"):
        return t.__name__
    return None


def fused_metric(d):
    """(metric, normalize) when distance object d equals a fused `ops.pairwise_distance` metric applied to
    (optionally L2-normalised) embeddings, else None. metric is "euclidean" / "sqeuclidean" / "cosine"
    (1 - cos; for CosineSimilarity the similarity is 1 - that, d.is_inverted tells the caller)."""
    kind = _kind(d)
    if kind is None or d.p != 2:
        return None
    if kind == "LpDistance" and d.power in (1, 2):
        return ("euclidean" if d.power == 1 else "sqeuclidean"), bool(d.normalize_embeddings)
    if kind == "CosineDistance" and d.power == 1:
        return "cosine", False
    if kind in ("CosineSimilarity", "DotProductSimilarity") and d.normalize_embeddings and d.power == 1:
        return "cosine", False
    return None


def matrix(d, emb: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
    """d(emb, ref) in the compute dtype (float32 for half inputs); PML's objects of the known kinds are
    computed by the fused op as well. ref None means the batch itself (exact zero self-distances)."""
    kind = _kind(d)
    if kind is not None and not isinstance(d, BaseDistance):
        # PML's own object: the same values, computed by our path
        if kind == "LpDistance":
            d = LpDistance(d.normalize_embeddings, d.p, d.power)
        elif kind == "CosineSimilarity":
            d = CosineSimilarity(d.p, d.power)
        else:
            d = DotProductSimilarity(d.normalize_embeddings, d.p, d.power)
    dtype = _checks.compute_dtype(emb)
    ref = None if ref is None or ref is emb else ref.to(dtype)
    emb = emb.to(dtype)
    if ref is None and not isinstance(d, BaseDistance):
        return d(emb)
    return d(emb, ref)


from .mahalanobis import MahalanobisMetric  # noqa: E402  (subclasses BaseDistance above)
