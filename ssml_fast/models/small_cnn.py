"""A small CNN embedding for 8 x 8 (digits-sized) images: trains in seconds on a CPU."""
from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """(N, 1, H, W) -> (N, embedding_dim) embeddings, L2-normalised when `normalize` (the default)."""

    def __init__(self, embedding_dim: int = 64, width: int = 32, normalize: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            _block(1, width), _block(width, width), nn.MaxPool2d(2),
            _block(width, 2 * width), _block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, embedding_dim)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.features(x))
        return nn.functional.normalize(z, dim=1) if self.normalize else z
