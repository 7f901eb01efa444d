"""Typed wrappers over the compiled ops (torch.ops.ssml_fast.*), with autograd and fake kernels."""
from .distance import DISTANCES, pairwise_distance
from .memory import bank_momentum_update_, queue_enqueue_, queue_enqueue_many_
from .triplet import MININGS, REDUCTIONS, TripletLoss, triplet_margin_loss

__all__ = [
    "DISTANCES",
    "MININGS",
    "REDUCTIONS",
    "TripletLoss",
    "bank_momentum_update_",
    "pairwise_distance",
    "queue_enqueue_",
    "queue_enqueue_many_",
    "triplet_margin_loss",
]
