"""Metric-learning losses with the PML call shape `loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)`."""
from .base import MetricLoss
from .triplet_margin_loss import TripletMarginLoss

__all__ = ["MetricLoss", "TripletMarginLoss"]
