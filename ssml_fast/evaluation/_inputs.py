"""Turns user input (torch tensors or numpy arrays) into the contiguous numpy arrays faiss wants, with
errors that name the argument."""
from __future__ import annotations

import numpy as np
import torch


def as_embeddings(name: str, value) -> np.ndarray:
    """(N, D) finite floating tensor/array -> C-contiguous float32 numpy array on the CPU."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
        if value.dim() != 2:
            raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(value.shape)}")
        arr = value.detach().to("cpu", torch.float32).numpy()
    elif isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{name} must be a floating array, got {value.dtype}")
        if value.ndim != 2:
            raise ValueError(f"{name} must be 2-D (N, D), got shape {value.shape}")
        arr = value.astype(np.float32, copy=False)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has dimension 0")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return np.ascontiguousarray(arr)


def as_labels(name: str, value, n: int) -> np.ndarray:
    """(n,) integer tensor/array/sequence -> int64 numpy array."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got {value.dtype}")
        arr = value.detach().cpu().numpy()
    else:
        arr = np.asarray(value)
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but the embeddings have {n} rows")
    return arr.astype(np.int64, copy=False)
