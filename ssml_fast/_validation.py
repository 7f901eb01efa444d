"""Input validation for the whole package: one place that turns bad input into errors naming the argument,
before any work starts. Every layer (ops, losses, miners, memory, samplers, evaluation) imports from here;
`ssml_fast.ops._checks` is a re-export kept for older imports.

One rule for numbers: an integer argument takes a Python or numpy integer (never a bool); a real argument
takes any Python or numpy real number (never a bool). One label validator for tensors (`check_labels`) and
one for user data given as tensors, arrays or sequences (`as_label_array`). One tuple of reductions.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable

import numpy as np
import torch

# The reductions of the fused losses (ops.triplet_margin_loss and the losses' reduction= argument).
REDUCTIONS = ("mean_nonzero", "mean", "sum")


# ---- numbers ---------------------------------------------------------------------------------------------

def is_int(value) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """A Python or numpy real number (integers included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value, low: int = 1) -> int:
    """An integer >= low, returned as a Python int."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_size(name: str, value) -> int:
    """A positive integer (a size or a count)."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return int(value)


def check_real(name: str, value) -> float:
    """A finite real number, returned as a Python float."""
    if not is_real(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_nonnegative(name: str, value) -> float:
    """A real number >= 0 (NaN rejected; +inf allowed, as a margin or a cutoff may be)."""
    if not is_real(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def check_positive(name: str, value) -> float:
    """A real number > 0."""
    v = check_nonnegative(name, value)
    if v == 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return v


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


# ---- tensors ---------------------------------------------------------------------------------------------

def check_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_embeddings(name: str, emb) -> torch.Tensor:
    """A (N, D) floating tensor."""
    check_tensor(name, emb)
    if emb.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(emb.shape)}")
    if not emb.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {emb.dtype}")
    return emb


def check_labels(name: str, labels, n: int, device: torch.device) -> torch.Tensor:
    """A (n,) integer tensor on `device`; returned as int64."""
    check_tensor(name, labels)
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int32 or int64), got {labels.dtype}")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries but the embeddings have {n} rows")
    check_same_device(name, labels, device)
    return labels.long()


def as_label_array(name: str, value, n: int) -> np.ndarray:
    """(n,) integer tensor / array / sequence (user data, any device) -> int64 numpy array."""
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


def check_same_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the embeddings are on {device}")


def check_same_dim(name: str, emb: torch.Tensor, ref: torch.Tensor) -> None:
    if emb.shape[1] != ref.shape[1]:
        raise ValueError(f"{name} has dimension {ref.shape[1]} but the embeddings have {emb.shape[1]}")


def compute_dtype(emb: torch.Tensor) -> torch.dtype:
    """Half-precision inputs are computed (and accumulated) in float32."""
    return emb.dtype if emb.dtype in (torch.float32, torch.float64) else torch.float32


def resolve_reference(emb: torch.Tensor, labels, ref_emb, ref_labels, labels_required: bool = True):
    """The reference set of the PML call shape, validated: returns (ref_emb, ref_labels as int64).

    (None, None) means the batch is its own reference (ref_emb None or `ref_emb is emb`); then a sample is
    never paired with itself, and ref_labels may only be omitted or be `labels` itself. `labels` is the
    caller's argument as given (before any conversion), so identity checks see the user's tensor.
    """
    if ref_emb is None or ref_emb is emb:
        if ref_labels is not None and ref_labels is not labels:
            if ref_emb is None:
                raise ValueError("ref_labels was given without ref_emb")
            raise ValueError("ref_emb is the embeddings themselves, so ref_labels must be omitted or be labels")
        return None, None
    check_embeddings("ref_emb", ref_emb)
    check_same_dim("ref_emb", emb, ref_emb)
    check_same_device("ref_emb", ref_emb, emb.device)
    if ref_labels is None:
        if labels_required:
            raise ValueError("ref_labels is required when ref_emb is given")
        return ref_emb, None
    return ref_emb, check_labels("ref_labels", ref_labels, ref_emb.shape[0], emb.device)
