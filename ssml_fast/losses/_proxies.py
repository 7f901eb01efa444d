"""Shared plumbing for the proxy losses: a learnable (C, D) proxy matrix and label validation."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import _checks
from .base import MetricLoss


class ProxyLoss(MetricLoss):
    supports_ref_emb = False

    def __init__(self, num_classes: int, embedding_size: int):
        super().__init__()
        for name, v in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_size))

    def _no_ref_emb_message(self):
        return f"{type(self).__name__} compares against its proxies; ref_emb is not supported"

    def _check(self, embeddings, labels, ref_emb):
        if labels is None:
            raise ValueError(f"{type(self).__name__} needs labels")
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings have dimension {embeddings.shape[1]} but embedding_size is "
                             f"{self.embedding_size}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, num_classes={self.num_classes}), "
                             f"got range [{int(labels.min())}, {int(labels.max())}]")
        dtype = _checks.compute_dtype(embeddings)
        return embeddings.to(dtype), self.proxies.to(device=embeddings.device, dtype=dtype)
