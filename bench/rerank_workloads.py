"""Workloads of bench_rerank.py: k-reciprocal re-ranking of a query/gallery split, several ways.

  numpy      the widely used dense numpy re-ranking (Zhong et al. 2017; float32 N x N matrices, a full
             argsort per row, Python loops over rows), re-stated here with the same steps and dtypes
  ssml       ssml_fast.ops.kreciprocal_rerank on the features (exact search + row max in one blocked pass)
  ssml_topk  ssml_fast.ops.kreciprocal_rerank on top-K lists from faiss (IndexFlatL2), search included

Data: N points in d = 128 from 50-point Gaussian clusters, the first N // 6 of them queries (about the
query share of Market-1501).
"""
from __future__ import annotations

import numpy as np
import torch

from ssml_fast.ops import kreciprocal_rerank, topk_neighbors

D = 128
K1, K2, LAMBDA = 20, 6, 0.3


def make_data(n, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(1, n // 50), D)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 1.5 * rng.normal(size=(n, D)).astype(np.float32)
    return torch.from_numpy(x), n // 6


def numpy_rerank(query, gallery, k1=K1, k2=K2, lambda_value=LAMBDA):
    q = query.shape[0]
    feat = torch.cat([query, gallery])
    n = feat.shape[0]
    sq = feat.pow(2).sum(1, keepdim=True)
    dist = (sq + sq.T - 2 * feat @ feat.T).numpy()
    dist = np.transpose(dist / np.max(dist, axis=0))
    V = np.zeros_like(dist, dtype=np.float32)
    rank = np.argsort(dist).astype(np.int32)

    def reciprocal(i, length):
        forward = rank[i, :length]
        backward = rank[forward, :length]
        return forward[np.where(backward == i)[0]]

    half = int(np.around(k1 / 2.0))
    for i in range(n):
        r = reciprocal(i, k1 + 1)
        expanded = r
        for c in r:
            h = reciprocal(c, half + 1)
            if len(np.intersect1d(h, r)) > 2.0 / 3 * len(h):
                expanded = np.append(expanded, h)
        expanded = np.unique(expanded)
        weight = np.exp(-dist[i, expanded])
        V[i, expanded] = weight / np.sum(weight)
    dist = dist[:q]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(n):
            V_qe[i] = np.mean(V[rank[i, :k2]], axis=0)
        V = V_qe
    del rank
    inv_index = [np.where(V[:, j] != 0)[0] for j in range(n)]
    jaccard = np.zeros_like(dist, dtype=np.float32)
    for i in range(q):
        temp_min = np.zeros(shape=[1, n], dtype=np.float32)
        nonzero = np.where(V[i] != 0)[0]
        for j in nonzero:
            rows = inv_index[j]
            temp_min[0, rows] += np.minimum(V[i, j], V[rows, j])
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    return (jaccard * (1 - lambda_value) + dist * lambda_value)[:, q:]


def make_workload(impl, n):
    x, q = make_data(n)
    if impl == "numpy":
        return lambda: numpy_rerank(x[:q], x[q:])
    if impl == "ssml":
        return lambda: kreciprocal_rerank(x[:q], x[q:], K1, K2, LAMBDA)
    if impl == "ssml_topk":
        def run():
            lists = topk_neighbors(x, 2 * (K1 + 1), use_faiss=True)
            return kreciprocal_rerank(lists, num_query=q, k1=K1, k2=K2, lambda_value=LAMBDA)
        return run
    raise ValueError(impl)
