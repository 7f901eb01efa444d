"""Autocast (AMP) behaviour of the fused ops: inside `torch.autocast` their floating inputs are cast to float32
and they run with autocast off, so they return float32.

Without this, an op called under autocast runs its kernel with autocast still on: the GEMM inside it
(at::mm, an autocast-listed op) comes back in bfloat16 / float16, which the kernels do not take
("pairwise_distance_cpu" not implemented for 'BFloat16'). Distances, mining decisions and neighbour lists
also need float32 anyway (half precision ties and reorders them). float64 inputs stay float64.

The in-place memory ops (queue_enqueue_, queue_enqueue_many_, bank_momentum_update_) are deliberately not
registered: casting their buffers would write into a temporary copy. They contain no autocast-listed op, and
their Python wrappers cast the rows / features to the buffer's dtype.
"""
from __future__ import annotations

import torch

FUNCTIONAL_OPS = (
    "pairwise_distance",
    "pairwise_distance_backward",
    "triplet_margin_loss_from_dist",
    "_triplet_margin_loss_from_dist_sorted",
    "contextual_similarity",
    "_contextual_similarity_gpu_algorithm",
    "kreciprocal_rerank",
    "kreciprocal_rerank_topk",
    "_kreciprocal_rerank_gpu_algorithm",
    "_kreciprocal_rerank_gpu_algorithm_topk",
    "row_relative",
    "row_relative_backward",
    "relaxed_contrastive_rows",
    "self_distillation_kl_rows",
)

AUTOCAST_DEVICES = tuple(d for d in ("cpu", "cuda") if torch.amp.is_autocast_available(d))

for _op in FUNCTIONAL_OPS:
    for _device in AUTOCAST_DEVICES:
        torch.library.register_autocast(f"ssml_fast::{_op}", _device, torch.float32)
