"""q anchors + their k nearest neighbours per batch (STML's NNBatchSampler), rebuilt each epoch."""
from __future__ import annotations

from typing import Optional

import torch

from ..neighbors import as_embeddings, check_metric, knn_search
from ._anchors import AnchorBatchSampler


class NearestNeighborBatchSampler(AnchorBatchSampler):
    """Batch sampler of `anchors_per_batch` random anchors, each with its `k` nearest neighbours.

    The neighbour table is built by `set_embeddings(embeddings)` (exact faiss search, the sample itself
    excluded); the trainer calls it with fresh embeddings of the whole training set before each epoch.
    Batches have size anchors_per_batch * (k + 1), laid out as described in `AnchorBatchSampler`
    (anchor then its neighbours, nearest first); an epoch has `num_batches` batches, by default
    num_samples // batch_size (at least 1), like STML.

    Args:
        num_samples: N, the dataset size (rows of the embeddings).
        anchors_per_batch: q.
        k: neighbours per anchor (< N).
        metric: "cosine" (faiss IndexFlatIP on normalised rows), "euclidean" (IndexFlatL2) or
            "inner_product".
        num_batches: batches per epoch (default N // (q * (k + 1)), at least 1).
        seed / generator: randomness of the anchor order; the same seed gives the same epochs.
        embeddings: optional (N, D) initial embeddings (same as calling `set_embeddings`).
        use_gpu: faiss GPU index (None = when available).
    """

    def __init__(
        self,
        num_samples: int,
        anchors_per_batch: int,
        k: int,
        *,
        metric: str = "cosine",
        num_batches: Optional[int] = None,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        embeddings=None,
        use_gpu: Optional[bool] = None,
    ):
        super().__init__(num_samples, anchors_per_batch, k, num_batches, seed, generator)
        self.metric = check_metric(metric)
        self.use_gpu = use_gpu
        self.neighbours: Optional[torch.Tensor] = None
        if embeddings is not None:
            self.set_embeddings(embeddings)

    def set_embeddings(self, embeddings) -> None:
        """Rebuild the (N, k) neighbour table from (N, D) embeddings (tensor or array)."""
        arr = as_embeddings("embeddings", embeddings)
        self._check_rows("embeddings", arr)
        _, self.neighbours = knn_search(arr, self.k, metric=self.metric, use_gpu=self.use_gpu)

    def _require_ready(self) -> None:
        if self.neighbours is None:
            raise RuntimeError("call set_embeddings(embeddings) before iterating a NearestNeighborBatchSampler")

    def _neighbours(self, anchors: torch.Tensor) -> torch.Tensor:
        return self.neighbours[anchors]
