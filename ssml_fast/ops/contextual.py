"""STML contextual similarity (thesis eqs 3.15-3.20), op `ssml_fast::contextual_similarity`."""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _validation


class ContextualSimilarity(NamedTuple):
    w: torch.Tensor    # (n, n) float32, (w_p + w_c) / 2
    w_p: torch.Tensor  # (n, n) float32, pairwise part exp(-||t_i - t_j||^2 / sigma)
    w_c: torch.Tensor  # (n, n) float32, symmetrised k-reciprocal contextual part


@torch.library.register_fake("ssml_fast::contextual_similarity")
def _contextual_similarity_fake(teacher_emb, k, sigma, ids):
    n = teacher_emb.shape[0]
    return tuple(teacher_emb.new_empty((n, n), dtype=torch.float32) for _ in range(3))


# The CUDA backend's algorithm run on the CPU (tests only), same contract.
torch.library.register_fake("ssml_fast::_contextual_similarity_gpu_algorithm")(_contextual_similarity_fake)


def contextual_similarity(
    teacher_emb: torch.Tensor,
    k: int,
    sigma: float = 3.0,
    ids: torch.Tensor | None = None,
    return_parts: bool = False,
):
    """STML's contextualised semantic similarity of a batch: the pseudo-label matrix w (n, n).

    teacher_emb: (n, d) float16/bfloat16/float32/float64 on any device; rows are L2-normalised inside.
    k: neighbourhood size, 1 <= k <= n (the official default is neighbours per query x views, 10).
    sigma: Gaussian bandwidth of the pairwise part, > 0 (official 3.0).
    ids: optional (n,) integer dataset index of each row; rows sharing a value (augmented views of one
    image) are ranked first in each other's neighbour lists, right after the row itself.

    With t the normalised rows:
      w^P_ij = exp(-||t_i - t_j||^2 / sigma)                                   (3.15)
      N_k(i) = the first k of row i's order: i, rows sharing ids[i], then the rest by ascending distance;
               equal distances go to the lower index (the same rule on CPU and CUDA). Distances come from
               one GEMM; exact copies of a row get bit-identical distances, so they always tie
      R(i)   = {j in N_k(i) : i in N_k(j)}                                      (3.16)
      w~_ij  = |R(i) ∩ R(j)| / |R(i)| if j in R(i) else 0                       (3.17)
      w^_i   = mean of w~_h over the first round(k/2) entries h of N_k(i)       (3.18)
               (half to even like numpy: k=5 -> 2; k=1 -> 0 is taken as 1, i.e. i itself)
      w^C    = (w^ + w^^T) / 2                                                  (3.19)
      w      = (w^P + w^C) / 2                                                  (3.20)
    Computed in float32 (float64 for float64 input) without autograd: it is a training target. Cost: the
    n x n x d GEMM plus about n^2 + n k^2 / 2 steps (a GEMM takes over the expansion when k is a large share
    of n).
    Rows with NaN or infinite values raise ValueError. w does not depend on the scale of teacher_emb (rows far
    beyond float32's squarable range, ~1e19, are brought to scale by an exact power of two first); the Gram GEMM
    runs in full float32 whatever the TF32 settings.
    Returns w (n, n) float32 on teacher_emb's device, or ContextualSimilarity(w, w_p, w_c) with
    return_parts=True. w, w_p and w_c are exactly symmetric.
    """
    _validation.check_embeddings("teacher_emb", teacher_emb)
    n = teacher_emb.shape[0]
    if n == 0:
        raise ValueError("teacher_emb must have at least one row, got shape (0, d)")
    if not _validation.is_int(k):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n] = [1, {n}], got {k}")
    if not _validation.is_real(sigma):
        raise TypeError(f"sigma must be a number, got {type(sigma).__name__}")
    sigma = float(sigma)
    if not (sigma > 0 and sigma != float("inf")):
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    if ids is not None:
        ids = _validation.check_labels("ids", ids, n, teacher_emb.device)
    with torch.no_grad():  # NaN / inf rows are rejected by the op itself (from the Gram diagonal, no extra pass)
        emb = teacher_emb.detach().to(_validation.compute_dtype(teacher_emb))
        w, w_p, w_c = torch.ops.ssml_fast.contextual_similarity(emb, k, float(sigma), ids)
    return ContextualSimilarity(w, w_p, w_c) if return_parts else w
