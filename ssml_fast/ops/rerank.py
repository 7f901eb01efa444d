"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), ops `ssml_fast::kreciprocal_rerank[_topk]`."""
from __future__ import annotations

import torch

from .. import _validation

RERANK_MODES = ("reference",)


@torch.library.register_fake("ssml_fast::kreciprocal_rerank")
def _rerank_fake(query, gallery, k1, k2, lambda_value):
    return query.new_empty((query.shape[0], gallery.shape[0]), dtype=torch.float32)


@torch.library.register_fake("ssml_fast::kreciprocal_rerank_topk")
def _rerank_topk_fake(distances, indices, num_query, k1, k2, lambda_value):
    return distances.new_empty((num_query, distances.shape[0] - num_query), dtype=torch.float32)


# The CUDA backend's algorithm run on the CPU (tests only).
@torch.library.register_fake("ssml_fast::_kreciprocal_rerank_gpu_algorithm")
def _rerank_gpu_algorithm_fake(query, gallery, k1, k2, lambda_value):
    return _rerank_fake(query, gallery, k1, k2, lambda_value)


@torch.library.register_fake("ssml_fast::_kreciprocal_rerank_gpu_algorithm_topk")
def _rerank_gpu_algorithm_topk_fake(distances, indices, num_query, k1, k2, lambda_value):
    return _rerank_topk_fake(distances, indices, num_query, k1, k2, lambda_value)


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _clamp_k(k1: int, k2: int, n: int) -> tuple[int, int]:
    """k1, k2 beyond the joint set of n rows change nothing (the lists are truncated to n; k1 = 2n already
    truncates both): clamped, so any Python int reaches the op as a valid int64 (the op clamps too)."""
    cap = 2 * max(n, 1)
    return min(k1, cap), min(k2, cap)


def kreciprocal_rerank(
    query,
    gallery: torch.Tensor | None = None,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    mode: str = "reference",
    *,
    num_query: int | None = None,
) -> torch.Tensor:
    """k-reciprocal re-ranked distances between queries and gallery -> (q, g) float32, on the input's device.

    Two ways to call it:
      kreciprocal_rerank(query, gallery): query (q, d), gallery (g, d) float features, same dtype and device.
      kreciprocal_rerank((distances, indices), num_query=q): top-K neighbour lists over the joint set of
        N = q + g rows (queries first), e.g. from faiss: distances (N, K) squared euclidean, non-decreasing
        along each row, indices (N, K) int64, K >= k1 + 1 (or N). No feature and no N x N distance is needed.

    Inputs must be finite (ValueError otherwise). The result does not depend on the features' scale: they are
    brought to scale by an exact power of two, so x * 1e20 re-ranks like x. Exact copies of a row are at squared
    distance exactly 0 from each other and at re-ranked distance 0 (collapsed features give all zeros). With
    top-K lists, distances must be >= 0, non-decreasing along each row, and row i must list i itself (unless every
    listed distance of the row is 0: exact copies of it may then fill the list).
    k1 or k2 beyond the joint set are truncated (any int is accepted).

    mode="reference" gives the numbers of the widely used numpy re-ranking code over the joint set:
      d      = squared euclidean distances (clamped at 0, exactly 0 on the diagonal), each row divided by its
               max (a row whose max is 0 stays 0);
      order  = each row's neighbours by ascending d, equal distances to the lower index;
      R(i)   = the k1-reciprocal set: j among i's first k1 + 1 neighbours (i itself included) and i among j's;
      expand = for each c in R(i), c's round(k1/2)-reciprocal set (half to even, first round(k1/2) + 1
               neighbours) is added when it shares strictly more than 2/3 of its members with R(i);
      V_i    = exp(-d_ij) over the expanded set, normalised to sum 1;
      if k2 != 1: V_i = mean of V over i's first k2 neighbours (i itself included);
      jaccard_ij = 1 - m / (2 - m), m = sum_l min(V_il, V_jl);
      out    = (1 - lambda_value) * jaccard + lambda_value * d, query rows x gallery columns.
    k1 + 1 or k2 beyond N are truncated to N, as numpy's slicing does.
    With top-K lists the same algorithm runs on the distance matrix in which every pair missing from row i's
    list is at row i's largest listed distance (so its normalised d is 1); the listed order is the neighbour
    order. With K = N (all pairs listed, ties by lower index) this is exactly the feature-based result.

    Cost: one blocked GEMM pass over the joint set (a tile of about 16M distances at a time, never N x N) plus
    sparse work of about N k1 k2 entries; memory is the (q, g) output plus O(N k1 k2).
    On CUDA the same steps run on the device (csrc/cuda/rerank_cuda.*): GEMM tiles of about 4M distances with a
    top-k on unique (distance, index) keys for the neighbour lists (a stable sort for float64), then one thread
    per row for the sparse steps (the per-row code the CPU kernel runs too) and one per (query, gallery) pair for
    the Jaccard step; extra memory about N * (k2 + 2.5) * capV * 8 bytes, capV = 84 at k1 = 20. The top-K entry
    point synchronises once to check the indices. Results match the CPU op up to float rounding (the GEMM and
    exp may round differently on the device, which can also reorder near-equal neighbours).
    """
    _validation.check_choice("mode", mode, RERANK_MODES)
    k1 = _validation.check_int("k1", k1, 1)
    k2 = _validation.check_int("k2", k2, 1)
    if k2 > k1:
        raise ValueError(f"k2 must be <= k1, got k2={k2} > k1={k1}")
    if not _validation.is_real(lambda_value):
        raise TypeError(f"lambda_value must be a number, got {type(lambda_value).__name__}")
    lambda_value = float(lambda_value)
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")

    with torch.no_grad():
        if isinstance(query, (tuple, list)):
            if gallery is not None:
                raise ValueError("with top-K lists pass (distances, indices) and num_query, not gallery")
            if len(query) != 2:
                raise ValueError(f"top-K lists must be a (distances, indices) pair, got {len(query)} items")
            distances, indices = query
            _validation.check_embeddings("distances", distances)
            _validation.check_tensor("indices", indices)
            if indices.shape != distances.shape:
                raise ValueError(f"indices has shape {tuple(indices.shape)} but distances has {tuple(distances.shape)}")
            if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
                raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
            _validation.check_same_device("indices", indices, distances.device)
            n, K = distances.shape
            num_query = _validation.check_int("num_query", num_query, 0) if num_query is not None else None
            if num_query is None:
                raise ValueError("num_query (the number of query rows, which come first) is required with top-K lists")
            if num_query > n:
                raise ValueError(f"num_query={num_query} exceeds the {n} rows of the lists")
            if K < min(k1 + 1, n):
                raise ValueError(f"the lists hold {K} neighbours per row but k1={k1} needs {min(k1 + 1, n)}")
            k1, k2 = _clamp_k(k1, k2, n)
            # The value rules (finite, >= 0, non-decreasing, each row listing itself, indices in range and
            # unique) are checked by the op in its own pass: no data is read here, so this stays traceable.
            d = distances.to(_validation.compute_dtype(distances))
            return torch.ops.ssml_fast.kreciprocal_rerank_topk(
                d, indices.long(), num_query, k1, k2, float(lambda_value))

        if num_query is not None:
            raise ValueError("num_query is only used with top-K lists; with features it is query.shape[0]")
        _validation.check_embeddings("query", query)
        if gallery is None:
            raise ValueError("gallery features are required (or pass top-K lists as a (distances, indices) pair)")
        _validation.check_embeddings("gallery", gallery)
        _validation.check_same_dim("gallery", query, gallery)
        _validation.check_same_device("gallery", gallery, query.device)
        # NaN / inf are rejected by the op (with the scale check it makes anyway): nothing is read here.
        k1, k2 = _clamp_k(k1, k2, query.shape[0] + gallery.shape[0])
        dtype = torch.float64 if torch.float64 in (query.dtype, gallery.dtype) else torch.float32
        return torch.ops.ssml_fast.kreciprocal_rerank(
            query.to(dtype), gallery.to(dtype), k1, k2, float(lambda_value))


def _self_first(dist: "np.ndarray", idx: "np.ndarray"):
    """Lists with each row i first in its own list at distance 0: faiss may leave i out among more than k exact
    copies (all at distance 0). Row i's other entries keep their order; the last one makes room if needed."""
    import numpy as np

    n, k = idx.shape
    rows = np.arange(n)
    is_self = idx == rows[:, None]
    if is_self[:, 0].all():
        return dist, idx
    keep = ~is_self
    keep[~is_self.any(axis=1), -1] = False  # no self entry: drop the last neighbour instead
    rest_d = dist[keep].reshape(n, k - 1)
    rest_i = idx[keep].reshape(n, k - 1)
    return (np.concatenate([np.zeros((n, 1), dist.dtype), rest_d], 1),
            np.concatenate([rows[:, None].astype(idx.dtype), rest_i], 1))


def topk_neighbors(features: torch.Tensor, k: int, use_faiss: bool | None = None):
    """The k nearest rows of every row of features (N, d) by squared euclidean distance, self included.

    Returns (distances (N, k) float32, indices (N, k) int64), nearest first — the input kreciprocal_rerank
    takes as top-K lists. Each row lists itself first, at distance 0 (also among exact copies of it). use_faiss=None uses faiss (exact IndexFlatL2) when it is installed and N >= 20,000,
    otherwise a blocked torch GEMM + topk on the features' device (memory: one 4096 x N tile at a time).
    Exactly tied distances may come in either order here (faiss and torch.topk do not promise one).
    """
    _validation.check_embeddings("features", features)
    n = features.shape[0]
    k = _validation.check_int("k", k, 1)
    if k > n:
        raise ValueError(f"k must be <= N = {n}, got {k}")
    _check_finite("features", features)
    if use_faiss is None:
        use_faiss = n >= 20_000
        if use_faiss:
            try:
                import faiss  # noqa: F401
            except ImportError:
                use_faiss = False
    with torch.no_grad():
        if use_faiss:
            import numpy as np

            from ..neighbors import FlatIndex

            x = np.ascontiguousarray(features.detach().float().cpu().numpy())
            dist, idx = FlatIndex(x, "euclidean", k, use_gpu=False).search(x, k)  # squared distances
            dist, idx = _self_first(np.maximum(dist, 0), idx)
            return torch.from_numpy(dist).to(features.device), torch.from_numpy(idx).to(features.device)
        x = features.detach().to(_validation.compute_dtype(features))
        sq = (x * x).sum(1)
        out_d, out_i = [], []
        for b in range(0, n, 4096):
            xb = x[b:b + 4096]
            d = (sq[b:b + 4096, None] + sq[None, :] - 2 * xb @ x.T).clamp_min_(0)
            # -1 on the diagonal puts each row first in its own list even among exact copies (distance-0 ties),
            # which kreciprocal_rerank requires; it is written back as 0.
            d[torch.arange(xb.shape[0], device=x.device), torch.arange(b, b + xb.shape[0], device=x.device)] = -1
            vals, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
            vals[:, 0] = 0
            out_d.append(vals.float())
            out_i.append(idx)
        return torch.cat(out_d), torch.cat(out_i)
