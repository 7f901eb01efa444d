"""Typed wrappers over the compiled ops (torch.ops.ssml_fast.*), with autograd and fake kernels."""
from . import _autocast  # noqa: F401  (registers the ops' autocast rules)
from .contextual import ContextualSimilarity, contextual_similarity
from .contextual_rows import contextual_similarity_rows
from .distance import DISTANCES, pairwise_distance
from .memory import bank_momentum_update_, queue_enqueue_, queue_enqueue_many_
from .stml_terms import relaxed_contrastive_rows, row_relative, row_relative_backward, self_distillation_kl_rows
from .rerank import RERANK_MODES, kreciprocal_rerank, topk_neighbors
from .triplet import MININGS, REDUCTIONS, TripletLoss, triplet_margin_loss

__all__ = [
    "DISTANCES",
    "MININGS",
    "REDUCTIONS",
    "RERANK_MODES",
    "ContextualSimilarity",
    "TripletLoss",
    "bank_momentum_update_",
    "contextual_similarity",
    "contextual_similarity_rows",
    "kreciprocal_rerank",
    "pairwise_distance",
    "queue_enqueue_",
    "queue_enqueue_many_",
    "relaxed_contrastive_rows",
    "row_relative",
    "row_relative_backward",
    "self_distillation_kl_rows",
    "topk_neighbors",
    "triplet_margin_loss",
]
