"""Turns user input (torch tensors or numpy arrays) into the contiguous numpy arrays faiss wants, with
errors that name the argument."""
from __future__ import annotations

import math

import numpy as np
import torch

from .._validation import as_label_array

# Largest coordinates outside [2^-40, 2^40] are brought to scale before the float32 search: faiss squares
# coordinates, and float32 squares overflow beyond ~1e19 (every distance inf, every neighbour tied) and
# underflow below ~1e-19. Rankings are scale-invariant and a power of two is exact, so nothing else changes.
_SCALE_LOW, _SCALE_HIGH = 2.0 ** -40, 2.0 ** 40


def as_float_array(name: str, value) -> np.ndarray:
    """(N, D) finite floating tensor/array -> numpy array on the CPU in its own floating dtype (float64 stays
    float64: a cast to float32 first would turn values beyond 3.4e38 into inf)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
        if value.dim() != 2:
            raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(value.shape)}")
        t = value.detach().cpu()
        arr = (t if t.dtype in (torch.float32, torch.float64) else t.float()).numpy()
    elif isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{name} must be a floating array, got {value.dtype}")
        if value.ndim != 2:
            raise ValueError(f"{name} must be 2-D (N, D), got shape {value.shape}")
        arr = value if value.dtype in (np.float32, np.float64) else value.astype(np.float32)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has dimension 0")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def common_scale(*arrays: np.ndarray | None) -> float:
    """The power of two that brings the largest |coordinate| of all the arrays into [1, 2) when it lies outside
    [2^-40, 2^40], else 1.0 (the usual embeddings are left bit for bit as they are)."""
    amax = max(float(np.abs(a).max()) for a in arrays if a is not None)
    if amax == 0 or _SCALE_LOW <= amax <= _SCALE_HIGH:
        return 1.0
    return math.ldexp(1.0, -math.frexp(amax)[1] + 1)


def to_float32(arr: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """C-contiguous float32 copy of arr * scale (the scaling in arr's own precision, before the cast)."""
    if scale != 1.0:
        arr = arr * scale
    return np.ascontiguousarray(arr, dtype=np.float32)


def as_embeddings(name: str, value) -> np.ndarray:
    """(N, D) finite floating tensor/array -> C-contiguous float32 numpy array on the CPU, brought to scale
    (see common_scale) when its coordinates would overflow or underflow when squared in float32."""
    arr = as_float_array(name, value)
    return to_float32(arr, common_scale(arr))


def as_labels(name: str, value, n: int) -> np.ndarray:
    """(n,) integer tensor/array/sequence -> int64 numpy array (the package's one rule, _validation)."""
    return as_label_array(name, value, n)
