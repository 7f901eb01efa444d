"""Exact k-nearest-neighbour search: the one implementation under the samplers, the memory banks, evaluation
and re-ranking (a low-level module: it imports only torch, numpy, faiss on first use, and ssml_fast._validation).

Two backends, one contract (exact search, best first):
- `knn_search` / `iter_knn_chunks` / `FlatIndex` (flat.py): faiss flat indexes over host data, tensors or numpy
  arrays, chunked queries, leave-one-out without a gallery, GPU when faiss-gpu sees one. Used for whole datasets
  (sampler neighbour tables, candidate pools, retrieval metrics).
- `inner_product_topk` (gemm.py): chunked GEMM + top-k on the tensors' own device, with per-query exclusion of
  one key id. Used for memory banks and queues that live on the training device.
The input converters (`as_embeddings` ...) turn user data into the contiguous float32 arrays faiss takes.
"""
from ._inputs import as_embeddings, as_float_array, as_labels, common_scale, to_float32
from .flat import (
    METRICS,
    FlatIndex,
    check_metric,
    default_chunk_size,
    gpu_available,
    iter_knn_chunks,
    knn_search,
    prepare,
    resolve_gpu,
)
from .gemm import inner_product_topk

__all__ = [
    "METRICS",
    "FlatIndex",
    "as_embeddings",
    "as_float_array",
    "as_labels",
    "check_metric",
    "common_scale",
    "default_chunk_size",
    "gpu_available",
    "inner_product_topk",
    "iter_knn_chunks",
    "knn_search",
    "prepare",
    "resolve_gpu",
    "to_float32",
]
