"""InsCLR mini-batches: anchor + its k nearest neighbours picked inside a per-anchor candidate pool."""
from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_int
from ..neighbors import as_embeddings, check_metric, knn_search, prepare
from ._anchors import AnchorBatchSampler


class CandidatePoolSampler(AnchorBatchSampler):
    """Batch sampler of InsCLR (thesis 3.2, steps 1-3).

    `build_pool(embeddings)` computes offline, once per cycle, each sample's candidate pool: its `pool_size`
    most similar samples (exact faiss search, itself excluded; IndexFlatIP on normalised rows for the
    default "cosine"). Each batch then holds `anchors_per_batch` random anchors, each followed by the `k`
    members of its pool nearest to it under the current embeddings given to `set_embeddings(embeddings)`
    (cheap: q x pool_size similarities per batch), or under the pool-building embeddings if none were
    set since. Layout as in `AnchorBatchSampler`; the whole pool of an anchor (InsCLR's training pool
    for the memory-bank stage) is `candidate_pool[anchor]`.

    Args:
        num_samples: N, the dataset size.
        anchors_per_batch: q (16 in InsCLR).
        k: neighbours per anchor (3 in InsCLR), <= pool_size.
        pool_size: candidates per sample (250 in InsCLR), < N.
        metric: "cosine", "euclidean" or "inner_product", used for the pool and for the selection.
        num_batches: batches per epoch (default N // (q * (k + 1)), at least 1).
        seed / generator: randomness of the anchor order.
        use_gpu: faiss GPU index for `build_pool` (None = when available).
    """

    def __init__(
        self,
        num_samples: int,
        anchors_per_batch: int = 16,
        k: int = 3,
        *,
        pool_size: int = 250,
        metric: str = "cosine",
        num_batches: Optional[int] = None,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        use_gpu: Optional[bool] = None,
    ):
        super().__init__(num_samples, anchors_per_batch, k, num_batches, seed, generator)
        self.pool_size = check_int("pool_size", pool_size)
        if self.pool_size < self.k:
            raise ValueError(f"pool_size={self.pool_size} must be >= k={self.k}")
        if self.pool_size >= self.num_samples:
            raise ValueError(f"pool_size={self.pool_size} must be < num_samples={self.num_samples}")
        self.metric = check_metric(metric)
        self.use_gpu = use_gpu
        self.candidate_pool: Optional[torch.Tensor] = None
        self._emb: Optional[torch.Tensor] = None

    def build_pool(self, embeddings) -> None:
        """Recompute the (N, pool_size) candidate pools from (N, D) embeddings; selection then uses them."""
        arr = as_embeddings("embeddings", embeddings)
        self._check_rows("embeddings", arr)
        _, self.candidate_pool = knn_search(arr, self.pool_size, metric=self.metric, use_gpu=self.use_gpu)
        self._emb = None

    def set_candidate_pool(self, pool) -> None:
        """Use a precomputed (N, P) int pool (P >= k; entries equal to the row's own index are skipped)."""
        if not isinstance(pool, torch.Tensor):
            raise TypeError(f"pool must be a torch.Tensor, got {type(pool).__name__}")
        if pool.dim() != 2 or pool.is_floating_point() or pool.dtype == torch.bool:
            raise ValueError(f"pool must be a 2-D integer tensor, got {pool.dtype} of shape {tuple(pool.shape)}")
        self._check_rows("pool", pool)
        if pool.shape[1] < self.k:
            raise ValueError(f"pool has {pool.shape[1]} candidates per sample, fewer than k={self.k}")
        if pool.numel() and (pool.min() < 0 or pool.max() >= self.num_samples):
            raise ValueError(f"pool holds indices outside [0, {self.num_samples})")
        own = pool.cpu().long() == torch.arange(self.num_samples)[:, None]
        if (pool.shape[1] - own.sum(1) < self.k).any():
            raise ValueError(f"some pool rows have fewer than k={self.k} candidates besides the sample itself")
        self.candidate_pool = pool.detach().cpu().long()
        self._emb = None

    def set_embeddings(self, embeddings) -> None:
        """Current (N, D) embeddings that pick each anchor's k neighbours inside its pool."""
        arr = prepare(as_embeddings("embeddings", embeddings), self.metric)
        self._check_rows("embeddings", arr)
        self._emb = torch.from_numpy(arr)

    def _require_ready(self) -> None:
        if self.candidate_pool is None:
            raise RuntimeError("call build_pool(embeddings) or set_candidate_pool(pool) before iterating")

    def _neighbours(self, anchors: torch.Tensor) -> torch.Tensor:
        pool = self.candidate_pool[anchors]
        if self._emb is None:
            if not (pool == anchors[:, None]).any():
                return pool[:, : self.k]
            # A precomputed pool may list the anchor itself: keep pool order, skip it.
            score = -torch.arange(pool.shape[1], dtype=torch.float32).expand(pool.shape).clone()
        else:
            a, c = self._emb[anchors], self._emb[pool]
            if self.metric == "euclidean":
                score = -(c - a[:, None]).pow(2).sum(-1)
            else:
                score = torch.einsum("qd,qpd->qp", a, c)
        score = score.masked_fill(pool == anchors[:, None], float("-inf"))
        return pool.gather(1, score.topk(self.k, dim=1).indices)
