"""STML's contextual similarity for a few rows of a large set, from given neighbour lists (thesis eqs 3.15-3.20).

`contextual_similarity` (the fused op) computes all n x n entries from the embeddings: one n x n x d GEMM and
n^2 work. STML with a memory (`stml_memory`) needs only the batch's r rows against n = batch + memory
columns, and can keep the memory's Gram matrix from step to step, so its neighbour lists come from a cache
(ssml_fast.memory.contextual_cache). This function takes over from there: given every row's neighbour list
N_k and the first r rows' squared distances, it returns w[:r] with the same formulas as the fused op, in
O(n k^2 + r n) work and memory: nothing n x n.

Why the whole neighbour table is needed for r rows: w^C_ij = (w^_ij + w^_ji) / 2 reads w^_j, the expansion of
any column j whose first neighbours include a k-reciprocal neighbour of i; which j those are is known only
from their lists. Everything after the lists is sparse: R(i) has at most k members.

On the CPU the sparse part (3.16-3.19) runs in a kernel, `ssml_fast::_contextual_expansion_rows` (~20x faster
at n = 4336, k = 10); other devices run the PyTorch version below (`_expansion_torch`), which adds in the
same order, so both give bit-identical w^C (tested). Their sums over at most round(k/2) x k terms follow the
fused op's order up to float rounding (values agree to ~1 ulp, tested).
"""
from __future__ import annotations

import torch

from .. import _validation


def expansion_size(k: int) -> int:
    """round(k / 2) half to even (numpy's around; the official code), at least 1: the fused op's rule."""
    return max(1, round(k / 2))


def contextual_similarity_rows(neighbours: torch.Tensor, sqdist_rows: torch.Tensor, sigma: float = 3.0,
                               return_parts: bool = False):
    """w[:r] of STML's contextual similarity over n rows, from all n neighbour lists.

    neighbours: (n, k) int64, row i's k nearest in rank order, i itself first (the fused op's N_k(i): i, the
      rows sharing its id, then ascending distance, ties to the lower index); entries in [0, n).
    sqdist_rows: (r, n) squared distances of the L2-normalised rows 0..r-1 to all n rows (r <= n), the
      diagonal 0; any float dtype (computed in float32, float64 kept).
    sigma: Gaussian bandwidth of the pairwise part, > 0.

      w^P_ij = exp(-sqdist_ij / sigma)                         (3.15)
      R(i)   = {j in N_k(i) : i in N_k(j)}                      (3.16)
      w~_ij  = |R(i) ∩ R(j)| / |R(i)| for j in R(i), else 0     (3.17)
      w^_i   = (1/m) sum of w~_h over the first m = round(k/2) entries h of N_k(i)   (3.18)
      w^C    = (w^ + w^^T) / 2,  w = (w^P + w^C) / 2           (3.19, 3.20)
    Returns w (r, n) (float32, or float64 for float64 distances), or (w, w_p, w_c) with return_parts=True.
    """
    if not isinstance(neighbours, torch.Tensor) or neighbours.dim() != 2 or neighbours.dtype != torch.long:
        raise ValueError(f"neighbours must be a 2-D int64 tensor (n, k), got "
                         f"{getattr(neighbours, 'shape', type(neighbours).__name__)}")
    n, k = neighbours.shape
    if n == 0 or k == 0 or k > n:
        raise ValueError(f"neighbours must have shape (n, k) with 1 <= k <= n, got {tuple(neighbours.shape)}")
    _validation.check_embeddings("sqdist_rows", sqdist_rows)
    r = sqdist_rows.shape[0]
    if sqdist_rows.shape[1] != n or r > n:
        raise ValueError(f"sqdist_rows must have shape (r, {n}) with r <= {n}, got {tuple(sqdist_rows.shape)}")
    _validation.check_same_device("sqdist_rows", sqdist_rows, neighbours.device)
    if not _validation.is_real(sigma) or not (0 < float(sigma) < float("inf")):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    with torch.no_grad():
        w_p, w_c = _parts(neighbours, sqdist_rows, float(sigma))
        w = (w_p + w_c) / 2
    return (w, w_p, w_c) if return_parts else w


@torch.library.register_fake("ssml_fast::_contextual_expansion_rows")
def _expansion_rows_fake(neighbours, rows, dtype):
    return neighbours.new_empty((rows, neighbours.shape[0]), dtype=dtype)


@torch.library.register_fake("ssml_fast::_contextual_cache_neighbours")
def _cache_neighbours_fake(g_bb, g_bm, g_mb, gram, count, ids, dead, k):
    # the neighbour lists of ContextualCache's CPU scan (ssml_fast/memory/contextual_cache.py)
    return ids.new_empty((g_bb.shape[0] + count, k))


def _parts(nn: torch.Tensor, d2: torch.Tensor, sigma: float):
    r = d2.shape[0]
    dtype = torch.float64 if d2.dtype == torch.float64 else torch.float32
    if nn.device.type == "cpu":
        w_c = torch.ops.ssml_fast._contextual_expansion_rows(nn, r, dtype)
    else:
        w_c = _expansion_torch(nn, r, dtype)
    w_p = torch.exp(d2.to(dtype) * (-1.0 / sigma))  # (3.15)
    return w_p, w_c


def _expansion_torch(nn: torch.Tensor, r: int, dtype: torch.dtype) -> torch.Tensor:
    """w^C[:r] (3.16-3.19) in PyTorch ops: the reference of the CPU kernel and the path of other devices."""
    n, k = nn.shape
    dev = nn.device
    rows = torch.arange(n, device=dev)
    # (3.16) mutual[i, a]: is i in the list of its a-th neighbour j = nn[i, a]?  (n, k, k) compares.
    mutual = (nn[nn] == rows[:, None, None]).any(dim=2)
    size = mutual.sum(dim=1)  # |R(i)| >= 1: i is first in its own list
    # R(i) as padded lists in N_k(i)'s order; pads differ between the two sides so they never match.
    r_left = torch.where(mutual, nn, torch.full_like(nn, -1))
    r_right = torch.where(mutual, nn, torch.full_like(nn, -2))
    m = expansion_size(k)
    # (3.17) w~[h, a] = |R(h) ∩ R(j)| / |R(h)| for j = nn[h, a] in R(h), where the r output rows read it: every
    # entry of the rows h in their expansions (3.18), and the entries of any row that land in an output
    # column (the transposed half of 3.19). The rest of w~ is never read: not computed.
    in_expansion = torch.zeros(n, dtype=torch.bool, device=dev)
    in_expansion[nn[:r, :m].reshape(-1)] = True
    needed = mutual & (in_expansion[:, None] | (nn < r))
    h_idx, a_idx = torch.nonzero(needed, as_tuple=True)
    j_idx = nn[h_idx, a_idx]
    common = (r_left[h_idx][:, :, None] == r_right[j_idx][:, None, :]).any(dim=2).sum(dim=1)  # (P,) k x k compares
    w_tilde = torch.zeros(n, k, dtype=dtype, device=dev)
    w_tilde[h_idx, a_idx] = common.to(dtype) / size[h_idx].to(dtype)

    # (3.18) unscaled w^_i = sum over the first m entries h of N_k(i) of w~_h (sparse rows: (h, a) -> column nn[h, a]).
    h = nn[:, :m]                                   # (n, m)
    cols = nn[h]                                    # (n, m, k) columns of w~_h
    vals = w_tilde[h]                               # (n, m, k) values (0 where the column is not in R(h))
    w_hat_rows = torch.zeros(r, n, dtype=dtype, device=dev)
    w_hat_rows.scatter_add_(1, cols[:r].reshape(r, m * k), vals[:r].reshape(r, m * k))
    # The transposed part w^_ji for the r rows i: every row j's entries that land in a column i < r.
    j_idx = rows[:, None, None].expand(n, m, k)
    hit = (cols < r) & (vals != 0)
    w_hat_cols = torch.zeros(r, n, dtype=dtype, device=dev)
    w_hat_cols.index_put_((cols[hit], j_idx[hit]), vals[hit], accumulate=True)
    # (3.19) as the fused op: the two halves summed first, then scaled (exactly symmetric there).
    return (w_hat_rows + w_hat_cols) * (1.0 / m) / 2
