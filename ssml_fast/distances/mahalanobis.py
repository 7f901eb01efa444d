"""MahalanobisMetric: a learnable distance d_M(x, z) = ||L x - L z||_2 (slides 004), usable as `distance=`."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .. import ops
from .. import _validation as _checks
from . import BaseDistance


class MahalanobisMetric(BaseDistance):
    """d_M(x, z) = sqrt((x - z)^T M (x - z)) with M = L^T L (positive semi-definite by construction)
                 = ||L x - L z||_2, i.e. the euclidean distance after the linear map f(x) = L x.

    MahalanobisMetric(embedding_size, out_features=None, init="identity", *, normalize_embeddings=False,
                      power=1)
      embedding_size: D, the width of the embeddings it compares;
      out_features: D' (rows of L), default D; a D' < D map learns a low-rank M;
      init: "identity" (L = I, or its D' x D truncation: d_M starts as the euclidean distance), or a
        (D', D) float32 / float64 tensor copied into L (half precision is stored as float32);
      normalize_embeddings: L2-normalise x and z before the map (PML's BaseDistance flag; default False:
        the slides' d_M on the vectors as given); power: 1 (d_M) or 2 (d_M^2, computed without a sqrt).
    L is an nn.Parameter, so a loss holding this distance (`loss = TripletMarginLoss(distance=metric)`) lists
    it in loss.parameters(): give those to the optimizer and d_M is learnt with the embedding.
    PML's distance interface: `metric(query (B, D), ref (R, D) = None) -> (B, R)`, `is_inverted=False`,
    `margin`, `smallest_dist`, `pairwise_distance(x, z) -> (N,)` row by row, so every loss and miner of
    ssml_fast (and PML's) accepts it. The matrix is the fused euclidean distance op on L x and L z (exact 0
    self-distances for ref=None). Half-precision inputs are computed in float32 (autocast off); L is cast to
    the inputs' compute dtype (float64 stays float64).
    """

    def __init__(self, embedding_size: int, out_features: int | None = None, init="identity", *,
                 normalize_embeddings: bool = False, power: float = 1):
        _checks.check_int("embedding_size", embedding_size)
        out = embedding_size if out_features is None else _checks.check_int("out_features", out_features)
        if power not in (1, 2):
            raise ValueError(f"power must be 1 (d_M) or 2 (d_M^2), got {power!r}")
        super().__init__(normalize_embeddings=normalize_embeddings, p=2, power=power, is_inverted=False)
        if isinstance(init, str):
            _checks.check_choice("init", init, ("identity",))
            weight = torch.eye(out, embedding_size)
        else:
            _checks.check_tensor("init", init)
            if init.shape != (out, embedding_size) or not init.is_floating_point():
                raise ValueError(f"init must be a floating ({out}, {embedding_size}) tensor, got {init.dtype} "
                                 f"of shape {tuple(init.shape)}")
            if not torch.isfinite(init).all():
                raise ValueError("init must be finite")
            weight = init.detach().clone()
            if weight.dtype not in (torch.float32, torch.float64):
                weight = weight.float()
        self.embedding_size, self.out_features = int(embedding_size), int(out)
        self.L = nn.Parameter(weight)

    @property
    def M(self) -> torch.Tensor:
        """The (D, D) PSD matrix L^T L of d_M."""
        return self.L.T @ self.L

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) = L x for rows x (N, D) -> (N, D'), in the compute dtype, with autocast off."""
        dtype = _checks.compute_dtype(x)
        with _autocast_off(x):
            return x.to(dtype) @ self.L.to(dtype).T

    def check_shapes(self, query_emb, ref_emb):
        super().check_shapes(query_emb, ref_emb)
        for name, t in (("query_emb", query_emb), ("ref_emb", ref_emb)):
            if t is not None and t.shape[1] != self.embedding_size:
                raise ValueError(f"{name} has dimension {t.shape[1]} but MahalanobisMetric was built for "
                                 f"embedding_size={self.embedding_size}")
            if t is not None and not t.is_floating_point():
                raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")

    def forward(self, query_emb, ref_emb=None):
        self.check_shapes(query_emb, ref_emb)
        q = self.project(self.maybe_normalize(query_emb))
        r = None if ref_emb is None or ref_emb is query_emb else self.project(self.maybe_normalize(ref_emb))
        # power 2 straight from the op (no sqrt then square: finite gradients at d = 0)
        return ops.pairwise_distance(q, r, "euclidean" if self.power == 1 else "sqeuclidean")

    def compute_mat(self, query_emb, ref_emb):
        return ops.pairwise_distance(self.project(query_emb), None if ref_emb is None else self.project(ref_emb),
                                     "euclidean")

    def pairwise_distance(self, query_emb, ref_emb):
        """d_M between matching rows: (N, D), (N, D) -> (N,)."""
        d = self.project(query_emb) - self.project(ref_emb)
        return torch.linalg.vector_norm(d, dim=1)

    def extra_repr(self):
        return (f"embedding_size={self.embedding_size}, out_features={self.out_features}, "
                f"normalize_embeddings={self.normalize_embeddings}, power={self.power}")


def _autocast_off(t: torch.Tensor):
    kind = t.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()
