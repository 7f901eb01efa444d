"""Typed wrappers over the compiled ops (torch.ops.ssml_fast.*), with autograd and fake kernels."""
from .distance import DISTANCES, pairwise_distance
from .triplet import MININGS, REDUCTIONS, TripletLoss, triplet_margin_loss

__all__ = [
    "DISTANCES",
    "MININGS",
    "REDUCTIONS",
    "TripletLoss",
    "pairwise_distance",
    "triplet_margin_loss",
]
