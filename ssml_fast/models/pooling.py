"""Global pooling of a trunk's (B, C, h, w) feature map into (B, C) features.

gap: mean over pixels; gmp: max over pixels; gap+gmp: their sum (STML's pooling, METHODS.md 1.1);
gem: generalised mean (mean_pixels clamp(x, eps)^p)^(1/p) with a learnable p (Radenovic et al.), p = 1
is GAP and p -> inf tends to GMP. InsCLR's fixed p = 3 is `GeM(3.0, learnable=False)`.
"""
from __future__ import annotations

import torch
from torch import nn

GLOBAL_POOLS = ("gap", "gmp", "gap+gmp", "gem")


class GeM(nn.Module):
    """Generalised-mean pooling (B, C, h, w) -> (B, C); p is a parameter when `learnable`.

    Computed in float32 whatever the input dtype (x^p overflows float16 for p = 3 at |x| > 40).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < float("inf"):
            raise ValueError(f"gem_p must be a finite number > 0, got {p!r}")
        if not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        t = torch.tensor(float(p))
        if learnable:
            self.p = nn.Parameter(t)
        else:
            self.register_buffer("p", t)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.float()
        return x.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={self.p.detach().item():.4g}, eps={self.eps}, learnable={isinstance(self.p, nn.Parameter)}"


class GlobalPool(nn.Module):
    """One of GLOBAL_POOLS as a module (GeM's p lives here, so it is trained with the trunk)."""

    def __init__(self, kind: str = "gap", gem_p: float = 3.0, gem_learnable: bool = True):
        super().__init__()
        if kind not in GLOBAL_POOLS:
            raise ValueError(f"pool must be one of {', '.join(GLOBAL_POOLS)}, got {kind!r}")
        self.kind = kind
        self.gem = GeM(gem_p, learnable=gem_learnable) if kind == "gem" else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 4:
            raise ValueError(f"global pooling expects a (B, C, h, w) map, got shape {tuple(z.shape)}")
        if self.kind == "gap":
            return z.mean(dim=(2, 3))
        if self.kind == "gmp":
            return z.amax(dim=(2, 3))
        if self.kind == "gap+gmp":
            return z.mean(dim=(2, 3)) + z.amax(dim=(2, 3))
        return self.gem(z)

    def extra_repr(self) -> str:
        return self.kind
