"""Evaluation (thesis 4.3): exact faiss k-NN, Recall@k / MAP@R / NMI, and the revisited Oxford/Paris mAP."""
from .knn import gpu_available, knn_search
from .retrieval import retrieval_metrics
from .revisitop import average_precision, landmark_map_at_k, revisitop_map

__all__ = [
    "knn_search",
    "gpu_available",
    "retrieval_metrics",
    "average_precision",
    "revisitop_map",
    "landmark_map_at_k",
]
