"""Workloads of bench_contextual.py: STML contextual similarity three ways, same inputs, same math.

  ssml       ssml_fast.ops.contextual_similarity (fused C++ kernel after one GEMM)
  dense      unfused dense-tensor PyTorch: GEMM, topk, 0/1 mask, a 0/1 GEMM for the intersections, gathers
  row_loop   the official STML code's approach: dense w^P / top-k, then a Python loop over rows for w~
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssml_fast.ops import contextual_similarity

SIGMA = 3.0


def make_inputs(n=240, d=1024, views=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g)
    ids = torch.arange(n // views).repeat(views)
    return emb, ids


def _first_ranked(t, ids, sigma):
    """w^P, and the ranking key with self and same-id rows forced to the top (value above any similarity)."""
    d2 = (2 - 2 * t @ t.T).clamp_min_(0)
    d2.fill_diagonal_(0)
    w_p = torch.exp(-d2 / sigma)
    key = w_p.masked_fill(ids[:, None] == ids[None, :], 2.0)
    return w_p, key


def dense_torch(emb, k, sigma=SIGMA, ids=None):
    t = F.normalize(emb)
    n = t.shape[0]
    ids = torch.arange(n) if ids is None else ids
    w_p, key = _first_ranked(t, ids, sigma)
    nn = key.topk(k, dim=1).indices
    in_knn = torch.zeros_like(w_p).scatter_(1, nn, 1.0)
    v = in_knn * in_knn.T                               # R as a 0/1 matrix
    w_tilde = v * (v @ v.T) / v.sum(1, keepdim=True)    # |R(i) ∩ R(j)| / |R(i)| on R(i)
    m = max(1, round(k / 2))
    w_hat = w_tilde[nn[:, :m]].mean(1)
    w_c = (w_hat + w_hat.T) / 2
    return (w_p + w_c) / 2


def row_loop(emb, k, sigma=SIGMA, ids=None):
    t = F.normalize(emb)
    n = t.shape[0]
    ids = torch.arange(n) if ids is None else ids
    w_p, key = _first_ranked(t, ids, sigma)
    nn = key.topk(k, dim=1).indices
    in_knn = torch.zeros_like(w_p).scatter_(1, nn, 1.0)
    v = ((in_knn + in_knn.T) / 2 == 1).float()
    w_tilde = torch.zeros_like(w_p)
    for i in range(n):                                  # one row at a time, as the official code does
        members = torch.nonzero(v[i]).flatten()
        w_tilde[i, members] = (v[:, members].sum(1) / len(members))[members]
    m = max(1, round(k / 2))
    w_hat = w_tilde[nn[:, :m]].mean(1)
    w_c = (w_hat + w_hat.T) / 2
    return (w_p + w_c) / 2


def make_workload(impl, n=240, d=1024, k=10):
    emb, ids = make_inputs(n, d)
    if impl == "ssml":
        return lambda: contextual_similarity(emb, k, SIGMA, ids=ids)
    if impl == "dense":
        return lambda: dense_torch(emb, k, SIGMA, ids)
    if impl == "row_loop":
        return lambda: row_loop(emb, k, SIGMA, ids)
    raise ValueError(impl)
