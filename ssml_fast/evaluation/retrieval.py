"""Retrieval metrics of thesis section 4.3 and of PML's AccuracyCalculator, from one exact k-NN pass."""
from __future__ import annotations

import warnings
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .._validation import check_int
from ..neighbors import as_float_array, as_labels, check_metric, common_scale, iter_knn_chunks, prepare, resolve_gpu, to_float32


def retrieval_metrics(
    embeddings,
    labels,
    ks: Sequence[int] = (1, 2, 4, 8),
    metric: str = "euclidean",
    *,
    gallery=None,
    gallery_labels=None,
    nmi: bool = True,
    kmeans_seed: int = 1234,
    kmeans_n_init: int = 1,
    kmeans_niter: int = 20,
    chunk_size: Optional[int] = None,
    use_gpu: Optional[bool] = None,
    rerank: Union[bool, Mapping, None] = None,
) -> Dict[str, float]:
    """Recall@k, precision@1, R-precision, MAP@R and NMI of an embedding.

    Args:
        embeddings: (N, D) floating tensor or array: the queries (and, without `gallery`, also the gallery).
        labels: (N,) integer class labels of `embeddings`.
        ks: the k of Recall@k; each must be <= the gallery size (N - 1 without a gallery).
        metric: "euclidean" (faiss IndexFlatL2) or "cosine" (IndexFlatIP on L2-normalised rows;
            "inner_product" ranks by the raw dot product).
        gallery, gallery_labels: (M, D) and (M,) for a query/gallery split (In-Shop style), searched
            as given (a query that is also in the gallery finds itself). Without them every sample
            queries all the others, never itself (leave-one-out; thesis 4.3).
        nmi: compute NMI (k-means is the most expensive part at large N).
        kmeans_seed, kmeans_n_init, kmeans_niter: faiss.Kmeans(seed, nredo, niter) settings. The
            defaults are PML's (faiss defaults plus niter=20), so NMI matches AccuracyCalculator;
            raise kmeans_n_init for a steadier NMI (each restart costs a full k-means).
        chunk_size, use_gpu: neighbour search settings (see `knn_search`); use_gpu also moves k-means.

    Returns:
        dict of floats:
        - "recall@k" for each k: fraction of queries with at least one of their k nearest neighbours
          sharing their label (thesis 4.3).
        - "precision_at_1", "r_precision", "map_at_r": PML's definitions. With R = number of gallery
          samples sharing the query's label, R-precision = (same-label among the R nearest) / R and
          MAP@R = (1/R) * sum_{i <= R} P(i) * rel(i).
        - "nmi": sklearn's normalized_mutual_info_score (arithmetic mean) between `labels` and the
          clusters of faiss.Kmeans with k = number of distinct labels of the queries; cosine clusters
          the L2-normalised rows. Only with `nmi=True`.
        Queries whose label has no other sample in the gallery have no defined answer: they are left out
        of every ranking metric (as in PML) with a warning; if no query is left, those metrics are NaN.
        Ties in distance are ordered as faiss returns them. The search runs in float32 on the embeddings
        brought to scale by one exact power of two (queries and gallery alike) when their coordinates are
        beyond 2^40 or below 2^-40, so large-scale (or float64) embeddings rank as they should.
    """
    metric = check_metric(metric)
    q_raw = as_float_array("embeddings", embeddings)
    q_labels = as_labels("labels", labels, q_raw.shape[0])
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("gallery and gallery_labels must be given together")
    if gallery is None:
        g_raw, g_labels = None, q_labels
        gallery_size = q_raw.shape[0] - 1
    else:
        g_raw = as_float_array("gallery", gallery)
        g_labels = as_labels("gallery_labels", gallery_labels, g_raw.shape[0])
        if g_raw.shape[1] != q_raw.shape[1]:
            raise ValueError(f"gallery has dimension {g_raw.shape[1]} but embeddings has {q_raw.shape[1]}")
        gallery_size = g_raw.shape[0]
    # One scale for queries and gallery (rankings are scale-invariant), applied in the input's precision
    # before the float32 search: large or tiny embeddings (float64 ones beyond float32's range included)
    # neither overflow to inf nor underflow to 0, which would tie every neighbour.
    scale = common_scale(q_raw, g_raw)
    q = to_float32(q_raw, scale)
    g = None if g_raw is None else to_float32(g_raw, scale)
    ks = _check_ks(ks, gallery_size)
    if not isinstance(nmi, bool):
        raise TypeError(f"nmi must be a bool, got {type(nmi).__name__}")
    if isinstance(kmeans_seed, bool) or not isinstance(kmeans_seed, (int, np.integer)):
        raise TypeError(f"kmeans_seed must be an int, got {type(kmeans_seed).__name__}")
    use_gpu = resolve_gpu(use_gpu)

    # R per query: same-label gallery samples, minus the query itself in leave-one-out.
    uniq, counts = np.unique(g_labels, return_counts=True)
    pos = np.searchsorted(uniq, q_labels)
    found = (pos < len(uniq)) & (uniq[np.minimum(pos, len(uniq) - 1)] == q_labels)
    r = np.where(found, counts[np.minimum(pos, len(uniq) - 1)], 0) - (1 if g is None else 0)
    valid = r > 0
    n_valid = int(valid.sum())
    if n_valid < len(r):
        warnings.warn(
            f"{len(r) - n_valid} of {len(r)} queries have no same-label sample in the gallery; "
            "they are left out of the ranking metrics",
            stacklevel=2,
        )

    # One search deep enough for the largest k and the largest R (R <= gallery size by construction).
    search_k = int(max(max(ks), r.max(initial=0)))
    if rerank:
        chunks = _reranked_chunks(q, g, search_k, metric, {} if rerank is True else dict(rerank), chunk_size)
    else:
        chunks = iter_knn_chunks(q, search_k, g, metric, chunk_size, use_gpu)
    sums = _ranking_sums(chunks, q_labels, g_labels, r, ks, search_k)
    out = {name: (total / n_valid if n_valid else float("nan")) for name, total in sums.items()}
    if nmi:
        out["nmi"] = _nmi(prepare(q, metric), q_labels, kmeans_seed, kmeans_n_init, kmeans_niter, use_gpu)
    return out


def _check_ks(ks, gallery_size: int):
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
        ks = (ks,)
    if not isinstance(ks, (tuple, list)) or len(ks) == 0:
        raise TypeError(f"ks must be a non-empty tuple or list of ints, got {ks!r}")
    ks = tuple(check_int("ks", k) for k in ks)
    if max(ks) > gallery_size:
        raise ValueError(f"ks contains k={max(ks)}, larger than the gallery ({gallery_size} samples per query)")
    return ks


def _reranked_chunks(q, g, k, metric, params, chunk_size):
    """Like `iter_knn_chunks`, but the k nearest by k-reciprocal re-ranked distance (ties to the lower index)."""
    from ..ops.rerank import kreciprocal_rerank

    query = torch.from_numpy(prepare(q, metric))
    gallery = query if g is None else torch.from_numpy(prepare(g, metric))
    dist = kreciprocal_rerank(query, gallery, **params).numpy()
    if g is None:
        np.fill_diagonal(dist, np.inf)
    step = 4096 if chunk_size is None else check_int("chunk_size", chunk_size)
    for start in range(0, dist.shape[0], step):
        yield start, None, np.argsort(dist[start:start + step], axis=1, kind="stable")[:, :k]


def _ranking_sums(chunks, q_labels, g_labels, r, ks, search_k):
    sums = {f"recall@{k}": 0.0 for k in ks}
    sums.update(precision_at_1=0.0, r_precision=0.0, map_at_r=0.0)
    ranks = np.arange(1, search_k + 1, dtype=np.float64)
    for start, _, idx in chunks:
        stop = start + idx.shape[0]
        rr = r[start:stop]
        keep = rr > 0
        if not keep.any():
            continue
        rr = rr[keep]
        same = g_labels[idx[keep]] == q_labels[start:stop][keep, None]
        for k in ks:
            sums[f"recall@{k}"] += float(same[:, :k].any(axis=1).sum())
        sums["precision_at_1"] += float(same[:, 0].sum())
        rel = same & (np.arange(search_k)[None, :] < rr[:, None])
        n_rel = rel.sum(axis=1)
        sums["r_precision"] += float((n_rel / rr).sum())
        precision = np.cumsum(rel, axis=1) / ranks
        sums["map_at_r"] += float(((precision * rel).sum(axis=1) / rr).sum())
    return sums


def _nmi(x: np.ndarray, labels: np.ndarray, seed: int, n_init: int, niter: int, gpu: bool) -> float:
    # Imported here: scikit-learn and faiss take about a second to load, and only NMI needs them.
    import faiss
    from sklearn.metrics import normalized_mutual_info_score

    n_clusters = int(np.unique(labels).size)
    if n_clusters == 1:
        return float(normalized_mutual_info_score(labels, np.zeros_like(labels)))
    kmeans = faiss.Kmeans(
        x.shape[1], n_clusters, niter=check_int("kmeans_niter", niter),
        nredo=check_int("kmeans_n_init", n_init), seed=int(seed), verbose=False,
        min_points_per_centroid=1,  # only silences faiss's "please provide more points" warning
        gpu=gpu,
    )
    kmeans.train(x)
    _, assign = kmeans.index.search(x, 1)
    return float(normalized_mutual_info_score(labels, assign[:, 0]))
