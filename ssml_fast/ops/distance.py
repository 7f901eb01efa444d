"""Pairwise distance matrix: one GEMM forward, two GEMMs backward, one when y is x (op `ssml_fast::pairwise_distance`)."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import _validation

DISTANCES = ("euclidean", "sqeuclidean", "cosine")


@torch.library.register_fake("ssml_fast::pairwise_distance")
def _pairwise_distance_fake(x, y, metric):
    return x.new_empty((x.shape[0], y.shape[0]))


@torch.library.register_fake("ssml_fast::pairwise_distance_backward")
def _pairwise_distance_backward_fake(grad, x, y, dist, metric, y_grad=True):
    return torch.empty_like(x), (torch.empty_like(y) if y_grad else y.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    x, y, metric = inputs
    ctx.metric = metric
    ctx.save_for_backward(x, y, output)


# The backward is not itself differentiable (the kernels' gradients carry no graph): a double backward raises
# instead of silently returning zero second derivatives.
@once_differentiable
def _backward(ctx, grad):
    x, y, dist = ctx.saved_tensors
    # A y that takes no gradient (a detached memory / bank against a batch) skips its GEMM.
    y_grad = bool(ctx.needs_input_grad[1])
    gx, gy = torch.ops.ssml_fast.pairwise_distance_backward(grad, x, y, dist, ctx.metric, y_grad)
    return gx, (gy if y_grad else None), None


torch.library.register_autograd("ssml_fast::pairwise_distance", _backward, setup_context=_setup_context)


def pairwise_distance(x: torch.Tensor, y: torch.Tensor | None = None, distance: str = "euclidean") -> torch.Tensor:
    """Distances between the rows of x (B, D) and y (R, D) -> (B, R), differentiable in both.

    distance: "euclidean" (||x - y||), "sqeuclidean" (||x - y||^2) or "cosine" (1 - cos(x, y)).
    Embeddings are used as given (no normalisation) except by "cosine". float32/float64; half
    precision is computed in float32 (also inside torch.autocast, which returns float32 here). y=None (or
    y is x) means y = x, and then the diagonal is exactly 0 (NaN for a NaN row).
    Non-finite and extreme inputs: a distance is NaN / inf exactly where the plain formula
    sqrt(sum((x_i - y_j)^2)) (1 - cos for "cosine") is, and rows too large for the GEMM form (float32 beyond
    ~1e19, whose squared norms overflow) get their true distance, computed from the coordinates; only a
    true value beyond the dtype's range is inf. The GEMMs run in full float32 whatever the TF32 settings.
    """
    _validation.check_embeddings("x", x)
    _validation.check_choice("distance", distance, DISTANCES)
    x_c = x.to(_validation.compute_dtype(x))
    if y is None or y is x:
        # The same tensor twice: the op then returns an exactly zero diagonal.
        return torch.ops.ssml_fast.pairwise_distance(x_c, x_c, distance)
    _validation.check_embeddings("y", y)
    _validation.check_same_dim("y", x, y)
    _validation.check_same_device("y", y, x.device)
    return torch.ops.ssml_fast.pairwise_distance(x_c, y.to(x_c.dtype), distance)
