"""Exponential moving average of a network's whole state (parameters and BN buffers), in place."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float,
                prefix_map: Optional[dict[str, str]] = None) -> int:
    """teacher[k] <- m * teacher[k] + (1 - m) * student[k] for every floating entry of teacher.state_dict();
    integer entries (BatchNorm's num_batches_tracked) are copied, as STML's official code does.

    Entries are matched by name, so a student with extra modules (STML's f head) is fine; `prefix_map`
    renames teacher prefixes to student ones ({"g_head.": "head_g."}). Every teacher entry must have a
    student counterpart of the same shape (ValueError otherwise). Returns the number of entries updated.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    s_state = student.state_dict()
    count = 0
    for name, t in teacher.state_dict().items():
        src = name
        for a, b in (prefix_map or {}).items():
            if name.startswith(a):
                src = b + name[len(a):]
                break
        s = s_state.get(src)
        if s is None or s.shape != t.shape:
            raise ValueError(f"teacher entry {name!r} has no student entry {src!r} of shape {tuple(t.shape)}")
        if t.is_floating_point():
            t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)
        else:
            t.copy_(s)
        count += 1
    return count
