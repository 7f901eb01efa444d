"""Embedding / projection heads put on a trunk's features."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .small_cnn import _positive_int

HEADS = ("identity", "linear", "mlp", "norm_linear_norm", "linear_norm")
INITS = ("default", "orthogonal")


class IdentityHead(nn.Identity):
    """No head: the trunk's features are the embedding (the headless recipe of SMALL_IMAGE_RECIPES.md)."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.in_dim = self.out_dim = in_dim


class LinearHead(nn.Linear):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(in_dim, out_dim)
        self.in_dim, self.out_dim = in_dim, out_dim


class NormLinearNorm(nn.Linear):
    """InsCLR's heads (METHODS.md 2.1): `norm_linear_norm` = L2-normalise, Linear without bias, L2-normalise
    (GLDv2, 2048 -> 2048); `linear_norm` = Linear with bias, then L2-normalise (INSTRE, 2048 -> 256).
    The output is unit-norm, so similarity is the dot product. Keys are nn.Linear's (weight[, bias])."""

    def __init__(self, in_dim: int, out_dim: int, normalize_input: bool = True):
        super().__init__(in_dim, out_dim, bias=not normalize_input)
        self.in_dim, self.out_dim, self.normalize_input = in_dim, out_dim, normalize_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        return F.normalize(super().forward(x), dim=1)


class MLPHead(nn.Sequential):
    """Linear(in, hidden) - BN - ReLU - Linear(hidden, out): SimCLR's projection head.

    The first Linear has no bias (BN's shift replaces it). BN needs more than one row per batch in training.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int):
        super().__init__(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))
        self.in_dim, self.hidden, self.out_dim = in_dim, hidden, out_dim


def make_head(kind: str, in_dim: int, out_dim: int = 128, *, hidden: int | None = None,
              init: str = "default") -> nn.Module:
    """A head (B, in_dim) -> (B, out_dim), with attribute `out_dim`.

    kind: "identity" (out_dim is ignored and equals in_dim), "linear", "mlp" (hidden defaults to in_dim),
    "norm_linear_norm" / "linear_norm" (InsCLR's, unit-norm output).
    STML's f and g are two "linear" heads with init="orthogonal" on the GAP+GMP features.
    init: "default" (PyTorch's) or "orthogonal" (orthogonal Linear weights, zero biases: STML's heads).
    """
    if kind not in HEADS:
        raise ValueError(f"head kind {kind!r} is unknown; available: {', '.join(HEADS)}")
    if init not in INITS:
        raise ValueError(f"init {init!r} is unknown; available: {', '.join(INITS)}")
    _positive_int(in_dim, "in_dim")
    if kind == "identity":
        if hidden is not None:
            raise ValueError(f"hidden is only used by the 'mlp' head, got hidden={hidden!r} with 'identity'")
        return IdentityHead(in_dim)
    _positive_int(out_dim, "out_dim")
    if kind != "mlp" and hidden is not None:
        raise ValueError(f"hidden is only used by the 'mlp' head, got hidden={hidden!r} with {kind!r}")
    if kind == "linear":
        head: nn.Module = LinearHead(in_dim, out_dim)
    elif kind in ("norm_linear_norm", "linear_norm"):
        head = NormLinearNorm(in_dim, out_dim, normalize_input=kind == "norm_linear_norm")
    else:
        head = MLPHead(in_dim, out_dim, in_dim if hidden is None else _positive_int(hidden, "hidden"))
    if init == "orthogonal":
        for m in head.modules():
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return head
