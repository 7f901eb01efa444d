"""Embedding regularizers with PML's protocol: `reg(x (N, D)) -> 0-d`, reduced by a reducer (MeanReducer
by default); pass one to a loss as `embedding_regularizer=` (times `embedding_reg_weight`)."""
from __future__ import annotations

import torch
from torch import nn

from ..reducers import MeanReducer

__all__ = ["BaseRegularizer", "LpRegularizer"]


class BaseRegularizer(nn.Module):
    def __init__(self, reducer=None):
        super().__init__()
        self.reducer = MeanReducer() if reducer is None else reducer

    def forward(self, x):
        labels = torch.arange(x.shape[0], device=x.device)
        return self.reducer(self.compute_loss(x), x, labels)

    def compute_loss(self, x):
        raise NotImplementedError


class LpRegularizer(BaseRegularizer):
    """||x_i||_p ** power per row, reduced (mean by default)."""

    def __init__(self, p: float = 2, power: float = 1, reducer=None):
        super().__init__(reducer)
        self.p, self.power = p, power

    def compute_loss(self, x):
        reg = torch.norm(x, p=self.p, dim=1)
        if self.power != 1:
            reg = reg ** self.power
        return {"loss": {"losses": reg, "indices": torch.arange(x.shape[0], device=x.device),
                         "reduction_type": "element"}}
