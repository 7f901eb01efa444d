"""Exact k-nearest-neighbour search through faiss (flat indexes, no approximation) for data on the host.

faiss is imported on first use, so the modules that merely import this one (samplers, evaluation) do not
load it.

The queries are searched in chunks, so only `chunk_size x k` results are alive at a time: the full
N x N distance matrix is never formed (faiss tiles the flat search internally), and callers that reduce
each chunk (see `retrieval_metrics`) evaluate N = 100,000 in O(N * k) memory.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from .._validation import check_choice, check_int
from ._inputs import as_float_array, common_scale, to_float32

METRICS = ("euclidean", "cosine", "inner_product")

# faiss-gpu's flat k-selection supports k <= 2048; larger searches run on the CPU.
_GPU_MAX_K = 2048
# Results kept per chunk: chunk_size * k entries of float32 + int64 (about 50 MB at this size).
_CHUNK_ELEMENTS = 1 << 22


def _faiss():
    import faiss  # deferred: a few hundred ms and not needed until a search runs

    return faiss


def gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def check_metric(metric) -> str:
    return check_choice("metric", metric, METRICS)


def prepare(emb: np.ndarray, metric: str) -> np.ndarray:
    """Cosine search is inner product on L2-normalised rows; zero rows stay zero."""
    if metric != "cosine":
        return emb
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return np.ascontiguousarray(emb / np.where(norms > 0, norms, 1.0), dtype=np.float32)


class FlatIndex:
    """A flat faiss index over `gallery`, on the GPU when asked and possible for this k."""

    def __init__(self, gallery: np.ndarray, metric: str, k: int, use_gpu: bool):
        faiss = _faiss()
        d = gallery.shape[1]
        index = faiss.IndexFlatL2(d) if metric == "euclidean" else faiss.IndexFlatIP(d)
        self._res = None  # the GPU resources must outlive the GPU index
        if use_gpu and k <= _GPU_MAX_K:
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, 0, index)
        index.add(gallery)
        self.index = index

    def search(self, x: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.index.search(x, k)


def resolve_gpu(use_gpu) -> bool:
    if use_gpu is None:
        return gpu_available()
    if not isinstance(use_gpu, bool):
        raise TypeError(f"use_gpu must be None or a bool, got {type(use_gpu).__name__}")
    if use_gpu and not gpu_available():
        raise ValueError("use_gpu=True but faiss has no GPU support or sees no GPU (install faiss-gpu)")
    return use_gpu


def default_chunk_size(k: int) -> int:
    return int(min(8192, max(1, _CHUNK_ELEMENTS // max(k, 1))))


def iter_knn_chunks(
    query: np.ndarray,
    k: int,
    gallery: Optional[np.ndarray] = None,
    metric: str = "euclidean",
    chunk_size: Optional[int] = None,
    use_gpu: Optional[bool] = None,
) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
    """Yields `(start, scores, indices)` for consecutive query chunks `query[start:start + len(indices)]`.

    Inputs are already-validated float32 numpy arrays (see `knn_search` for the public, checked entry).
    `scores`/`indices` are (chunk, k) float32/int64, best first. Without `gallery` the search is
    leave-one-out over `query`: k + 1 neighbours are searched and each row's own index is removed
    (if ties pushed it out of the k + 1, the last neighbour is dropped instead, as PML does).
    """
    metric = check_metric(metric)
    use_gpu = resolve_gpu(use_gpu)
    leave_one_out = gallery is None
    q = prepare(query, metric)
    g = q if leave_one_out else prepare(gallery, metric)
    search_k = k + 1 if leave_one_out else k
    index = FlatIndex(g, metric, search_k, use_gpu)
    step = default_chunk_size(search_k) if chunk_size is None else check_int("chunk_size", chunk_size)
    for start in range(0, q.shape[0], step):
        stop = min(start + step, q.shape[0])
        scores, indices = index.search(q[start:stop], search_k)
        if leave_one_out:
            scores, indices = _drop_self(scores, indices, np.arange(start, stop))
        if metric == "euclidean":
            scores = np.sqrt(np.maximum(scores, 0.0))
        yield start, scores, indices


def _drop_self(scores: np.ndarray, indices: np.ndarray, rows: np.ndarray):
    is_self = indices == rows[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    keep = ~is_self
    n, kp1 = indices.shape
    return scores[keep].reshape(n, kp1 - 1), indices[keep].reshape(n, kp1 - 1)


def knn_search(
    query,
    k: int,
    gallery=None,
    *,
    metric: str = "euclidean",
    chunk_size: Optional[int] = None,
    use_gpu: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of every query row.

    Args:
        query: (Nq, D) floating tensor or array.
        k: neighbours per query; at most the gallery size (Nq - 1 without a gallery).
        gallery: (Ng, D) floating tensor or array. None = leave-one-out search of `query` against itself
            (a row is never its own neighbour).
        metric: "euclidean" (faiss IndexFlatL2), "cosine" (IndexFlatIP on L2-normalised rows) or
            "inner_product" (IndexFlatIP on the raw rows).
        chunk_size: queries per faiss call; default keeps about 2**22 results alive at a time.
        use_gpu: None = use a GPU index when faiss-gpu sees a GPU; True requires it; False forces CPU.

    Returns:
        scores: (Nq, k) float32, best first: euclidean distance (ascending) for "euclidean",
            similarity (descending) for "cosine" / "inner_product".
        indices: (Nq, k) int64 row indices into the gallery (into `query` for leave-one-out).
        Ties are ordered as faiss returns them.
    """
    q_raw = as_float_array("query", query)
    g_raw = None if gallery is None else as_float_array("gallery", gallery)
    # One exact power-of-two scale for both sides when float32 squares would over- or underflow (see
    # _inputs.common_scale); the scores are returned in the input's scale.
    scale = common_scale(q_raw, g_raw)
    q = to_float32(q_raw, scale)
    g = None if g_raw is None else to_float32(g_raw, scale)
    k = check_int("k", k)
    if g is not None and g.shape[1] != q.shape[1]:
        raise ValueError(f"gallery has dimension {g.shape[1]} but query has {q.shape[1]}")
    available = q.shape[0] - 1 if g is None else g.shape[0]
    if k > available:
        where = "the other query rows (leave-one-out)" if g is None else "gallery rows"
        raise ValueError(f"k={k} is larger than the {available} {where}")
    scores = np.empty((q.shape[0], k), dtype=np.float32)
    indices = np.empty((q.shape[0], k), dtype=np.int64)
    for start, s, i in iter_knn_chunks(q, k, g, metric, chunk_size, use_gpu):
        scores[start:start + len(i)] = s
        indices[start:start + len(i)] = i
    if scale != 1.0 and metric != "cosine":
        # Back to the input's scale, in float64 first (a result beyond float32's range becomes inf).
        unscale = 1.0 / scale if metric == "euclidean" else 1.0 / (scale * scale)
        with np.errstate(over="ignore"):
            scores = (scores.astype(np.float64) * unscale).astype(np.float32)
    return torch.from_numpy(scores), torch.from_numpy(indices)
