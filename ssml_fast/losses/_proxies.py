"""Shared plumbing for the proxy losses: a learnable (C, D) proxy matrix, label validation, get_logits."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import _checks
from . import _pairs
from .base import MetricLoss


class ProxyLoss(MetricLoss):
    supports_ref_emb = False

    def __init__(self, num_classes: int, embedding_size: int, distance=None, reducer=None,
                 embedding_regularizer=None, embedding_reg_weight=1.0, weight_regularizer=None,
                 weight_reg_weight=1.0, distance_strings=None):
        for name, v in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            _checks.check_int(name, v)
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight,
                         distance_strings=distance_strings)
        self.num_classes, self.embedding_size = int(num_classes), int(embedding_size)
        self.proxies = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))
        if weight_regularizer is not None and not callable(weight_regularizer):
            raise TypeError(f"weight_regularizer must be callable, got {type(weight_regularizer).__name__}")
        self.weight_regularizer = weight_regularizer
        self.weight_reg_weight = _pairs.check_real("weight_reg_weight", weight_reg_weight)

    def _no_ref_emb_message(self):
        return f"{type(self).__name__} compares against its proxies; ref_emb is not supported"

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """distance(embeddings, proxies) -> (B, num_classes), PML's get_logits (a distance matrix for
        ProxyNCALoss's default LpDistance, cosine similarities for ProxyAnchorLoss's)."""
        _checks.check_embeddings("embeddings", embeddings)
        dtype = _checks.compute_dtype(embeddings)
        return self.matrix(embeddings.to(dtype), self.proxies.to(device=embeddings.device, dtype=dtype))

    def _weight_reg(self, proxies):
        if self.weight_regularizer is None:
            return None
        return self.weight_regularizer(proxies) * self.weight_reg_weight

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
        if self.proxies.dtype != dtype or self.proxies.device != embeddings.device:
            # As PML's cast_types: the proxies follow the embeddings' dtype and device (float32 for half
            # inputs), so get_logits and the parameter the optimiser holds agree with the loss.
            self.proxies.data = self.proxies.data.to(device=embeddings.device, dtype=dtype)
        return embeddings.to(dtype), self.proxies
