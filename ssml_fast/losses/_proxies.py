"""Shared plumbing for the proxy / classification losses: a learnable class-weight matrix, label
validation, get_logits, and the reduction of per-sample losses plus PML's weight regularisation.

The weight matrix keeps PML's attribute name and layout per loss, so PML code that reads or assigns it
(`loss.W = ...`, `loss.fc`, `loss.proxies`) works unchanged:
  weight_layout "rows":    (num_weights, embedding_size), one class vector per row (ProxyNCA/Anchor's `proxies`);
  weight_layout "columns": (embedding_size, num_weights), one class vector per column (the margin-softmax
                           family's `W`, SoftTriple's `fc`).
`weight_rows()` is the (num_weights, embedding_size) view either way; the weight regulariser gets it (PML
passes `W.t()`). num_weights is num_classes times the vectors per class (sub-centres, SoftTriple centres).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import _validation as _checks
from . import _pairs
from .base import MetricLoss

NORM_EPS = 1e-12  # F.normalize's floor of a norm (what PML normalises with): zero vectors stay 0, finite gradients


class ProxyLoss(MetricLoss):
    supports_ref_emb = False
    weight_attr = "proxies"
    weight_layout = "rows"

    def __init__(self, num_classes: int, embedding_size: int, distance=None, reducer=None,
                 embedding_regularizer=None, embedding_reg_weight=1.0, weight_regularizer=None,
                 weight_reg_weight=1.0, distance_strings=None, *, weight_init_func=None, per_class: int = 1):
        for name, v in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            _checks.check_int(name, v)
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight,
                         distance_strings=distance_strings)
        self.num_classes, self.embedding_size = int(num_classes), int(embedding_size)
        n = self.num_classes * per_class
        shape = (n, self.embedding_size) if self.weight_layout == "rows" else (self.embedding_size, n)
        setattr(self, self.weight_attr, nn.Parameter(torch.empty(shape)))
        if weight_init_func is not None and not callable(weight_init_func):
            raise TypeError(f"weight_init_func must be callable, got {type(weight_init_func).__name__}")
        self.weight_init_func = self.default_weight_init if weight_init_func is None else weight_init_func
        with torch.no_grad():
            self.weight_init_func(self.weight)
        if weight_regularizer is not None and not callable(weight_regularizer):
            raise TypeError(f"weight_regularizer must be callable, got {type(weight_regularizer).__name__}")
        self.weight_regularizer = weight_regularizer
        self.weight_reg_weight = _pairs.check_real("weight_reg_weight", weight_reg_weight)

    @staticmethod
    def default_weight_init(w):
        """PML's WeightMixin default: N(0, 1)."""
        torch.nn.init.normal_(w)

    @property
    def weight(self) -> nn.Parameter:
        """The learnable class-weight parameter, whatever PML calls it (proxies / W / fc)."""
        return getattr(self, self.weight_attr)

    def weight_rows(self) -> torch.Tensor:
        """The class vectors as rows, (num_weights, embedding_size)."""
        w = self.weight
        return w if self.weight_layout == "rows" else w.t()

    def _no_ref_emb_message(self):
        return f"{type(self).__name__} compares against its proxies; ref_emb is not supported"

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """distance(embeddings, proxies) -> (B, num_classes), PML's get_logits (a distance matrix for
        ProxyNCALoss's default LpDistance, cosine similarities for ProxyAnchorLoss's)."""
        _checks.check_embeddings("embeddings", embeddings)
        dtype = _checks.compute_dtype(embeddings)
        return self.matrix(embeddings.to(dtype), self.weight_rows().to(device=embeddings.device, dtype=dtype))

    def _weight_reg(self, rows):
        if self.weight_regularizer is None:
            return None
        return self.weight_regularizer(rows) * self.weight_reg_weight

    def _check_dim(self, embeddings):
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings have dimension {embeddings.shape[1]} but embedding_size is "
                             f"{self.embedding_size}")

    def _cast_weight(self, embeddings):
        """As PML's cast_types: the weight follows the embeddings' device and dtype (float32 for half
        inputs), so get_logits and the parameter the optimiser holds agree with the loss."""
        dtype = _checks.compute_dtype(embeddings)
        w = self.weight
        if w.dtype != dtype or w.device != embeddings.device:
            w.data = w.data.to(device=embeddings.device, dtype=dtype)
        return embeddings.to(dtype)

    def _check(self, embeddings, labels, ref_emb):
        """Validated (embeddings in the compute dtype, the weight as rows)."""
        if labels is None:
            raise ValueError(f"{type(self).__name__} needs labels")
        self._check_dim(embeddings)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, num_classes={self.num_classes}), "
                             f"got range [{int(labels.min())}, {int(labels.max())}]")
        x = self._cast_weight(embeddings)
        return x, self.weight_rows()

    def _logits_input(self, embeddings):
        """get_logits' input check: (B, embedding_size) floating, returned in the compute dtype."""
        _checks.check_embeddings("embeddings", embeddings)
        self._check_dim(embeddings)
        return self._cast_weight(embeddings)

    def reduce_per_sample(self, per_sample, embeddings, labels):
        """PML's loss_dict {"loss": per-sample "element" losses, "weight_reg_loss": already reduced}
        reduced by self.reducer; Mean / Sum directly (the default MeanReducer), others via the protocol."""
        reg = self._weight_reg(self.weight_rows())
        kind = self.reduction_kind
        if kind in ("mean", "sum"):
            out = per_sample.mean() if kind == "mean" else per_sample.sum()
            return out if reg is None else out + reg
        loss_dict = {"loss": {"losses": per_sample, "indices": torch.arange(per_sample.shape[0], device=per_sample.device),
                              "reduction_type": "element"}}
        if reg is not None:
            loss_dict["weight_reg_loss"] = {"losses": reg, "indices": None, "reduction_type": "already_reduced"}
        return self.reduce(loss_dict, embeddings, labels)
