"""Fused triplet margin loss (batch-all / batch-hard / semi-hard) on top of `pairwise_distance`."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from .. import _validation
from .distance import DISTANCES, pairwise_distance

MININGS = ("all", "hard", "semihard")
REDUCTIONS = _validation.REDUCTIONS


class TripletLoss(NamedTuple):
    loss: torch.Tensor          # 0-d, the reduced loss
    num_active: torch.Tensor    # 0-d int64, triplets with loss > 0
    num_triplets: torch.Tensor  # 0-d int64, valid triplets considered


@torch.library.register_fake("ssml_fast::triplet_margin_loss_from_dist")
@torch.library.register_fake("ssml_fast::_triplet_margin_loss_from_dist_sorted")
def _triplet_fake(dist, labels, ref_labels, exclude_diagonal, margin, mining, reduction, soft):
    scalar_long = dist.new_empty((), dtype=torch.int64)
    # The kernels return a contiguous dloss/ddist whatever dist's strides (a transposed dist included).
    return dist.new_empty(()), scalar_long, scalar_long.clone(), dist.new_empty(dist.shape)


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[3])
    ctx.save_for_backward(output[3])


# The backward is not itself differentiable (the kernels' gradients carry no graph): a double backward raises
# instead of silently returning zero second derivatives.
@once_differentiable
def _backward(ctx, grad_loss, _grad_active, _grad_triplets, _grad_dloss):
    (dloss_ddist,) = ctx.saved_tensors
    return grad_loss * dloss_ddist, None, None, None, None, None, None, None


torch.library.register_autograd(
    "ssml_fast::triplet_margin_loss_from_dist", _backward, setup_context=_setup_context
)


def triplet_margin_loss(
    emb: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    mining: str = "all",
    distance: str = "euclidean",
    reduction: str = "mean_nonzero",
    ref_emb: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    soft: bool = False,
    return_stats: bool = False,
    ref_starts_with_batch: bool = False,
):
    """Triplet margin loss max(0, d(a, p) - d(a, n) + margin), mined and reduced in one pass.

    emb: (B, D) float anchors; labels: (B,) int32/int64. ref_emb (R, D) / ref_labels (R,): positives and
    negatives come from this reference set instead of the batch (cross-batch memory); `ref_emb is emb`
    (or None) means the batch itself, and then a sample is never its own positive.

    mining: "all" (every valid triplet, exact, O(B R log R)), "hard" (per anchor the farthest positive
    and nearest negative; anchors lacking either are skipped), "semihard" (per (a, p) the nearest
    negative farther than p, used when inside the margin).
    distance: "euclidean", "sqeuclidean", "cosine" (1 - cos). reduction: "mean_nonzero" (mean over
    triplets with loss > 0), "mean" (over all valid triplets), "sum".
    soft: softplus(d_ap - d_an + margin) instead of the hinge ("hard"/"semihard"; margin=0 gives the
    soft-margin loss of Hermans et al.).
    ref_starts_with_batch: rows [0, B) of ref_emb are the batch itself (a cross-batch memory's [batch; memory]):
    reference row i is never anchor i's positive, as in the self-reference case.

    Returns the 0-d loss (float32 for half-precision inputs and inside torch.autocast), or
    TripletLoss(loss, num_active, num_triplets) with return_stats=True. A batch without any valid triplet
    gives 0 with zero gradient. A NaN distance among an anchor's positives or negatives (a NaN embedding)
    makes the loss NaN, and that anchor's gradient entries NaN, whatever the mining: a diverged model is not
    hidden by comparisons that skip NaN.
    """
    _validation.check_embeddings("emb", emb)
    ref_emb, ref_labels = _validation.resolve_reference(emb, labels, ref_emb, ref_labels)
    labels = _validation.check_labels("labels", labels, emb.shape[0], emb.device)
    margin = _validation.check_nonnegative("margin", margin)
    _validation.check_choice("mining", mining, MININGS)
    _validation.check_choice("distance", distance, DISTANCES)
    _validation.check_choice("reduction", reduction, REDUCTIONS)
    if soft and mining == "all":
        raise ValueError("soft=True is supported for mining='hard' and 'semihard', not 'all'")

    if not isinstance(ref_starts_with_batch, bool):
        raise TypeError(f"ref_starts_with_batch must be a bool, got {type(ref_starts_with_batch).__name__}")
    self_reference = ref_emb is None
    if self_reference:
        ref_emb, ref_labels = emb, labels
    elif ref_starts_with_batch and ref_emb.shape[0] < emb.shape[0]:
        raise ValueError(f"ref_starts_with_batch=True but ref_emb has {ref_emb.shape[0]} rows, fewer than the "
                         f"batch's {emb.shape[0]}")

    dist = pairwise_distance(emb, ref_emb, distance)
    loss, active, total, _ = torch.ops.ssml_fast.triplet_margin_loss_from_dist(
        dist, labels, ref_labels, self_reference or ref_starts_with_batch, margin, mining, reduction, bool(soft)
    )
    return TripletLoss(loss, active, total) if return_stats else loss
