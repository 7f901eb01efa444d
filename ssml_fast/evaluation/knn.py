"""Exact k-NN search for evaluation: re-exported from ssml_fast.neighbors, where the one implementation lives
(kept so `ssml_fast.evaluation.knn_search` and older imports of this module work)."""
from ..neighbors import (  # noqa: F401
    METRICS,
    check_metric,
    default_chunk_size,
    gpu_available,
    iter_knn_chunks,
    knn_search,
    prepare,
    resolve_gpu,
)
