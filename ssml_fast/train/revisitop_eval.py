"""rOxford5k / rParis6k evaluation of a trained method (thesis tables 7-9; METHODS.md section 4).

Every database image and every query (cropped to its box) is embedded at its size capped to
`max_size` on the long side, times each of `scales` (InsCLR / revisitop: 1024 and [1, 1/sqrt 2, 1/2]);
the per-scale embeddings are L2-normalised, summed, and L2-normalised again. Ranks are by inner product
(cosine), and `evaluation.revisitop_map` gives the Easy / Medium / Hard mAP (and mP@k).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import torch
import torch.nn.functional as F

DEFAULT_SCALES = (1.0, 1 / math.sqrt(2), 0.5)


@torch.no_grad()
def embed_multiscale(method, files, device, scales: Sequence[float] = DEFAULT_SCALES) -> torch.Tensor:
    """(N, D) L2-normalised sum over scales of the L2-normalised embeddings of `files` (revisitop images)."""
    from .evaluate import embed_images

    total = None
    for s in scales:
        if not 0 < s <= 1:
            raise ValueError(f"scales must be in (0, 1], got {s}")
        scaled = replace(files, image_size=max(8, round(files.image_size * s)))
        emb = F.normalize(embed_images(method.embed, method, scaled, device), dim=1)
        total = emb if total is None else total + emb
    return F.normalize(total, dim=1)


def evaluate_revisitop(method, root, name: str, device, *, scales: Sequence[float] = DEFAULT_SCALES,
                       max_size: int = 1024, kappas: Sequence[int] = (1, 5, 10), num_workers: int = 0) -> dict:
    """{"easy", "medium", "hard"} mAP (and "<protocol>_mP@k") of `method` on `name` under `root`."""
    from ..data.revisitop import load_revisitop
    from ..evaluation import revisitop_map

    data = load_revisitop(root, name, max_size=max_size)
    db = embed_multiscale(method, data.database.with_loader(num_workers, False), device, scales)
    q = embed_multiscale(method, data.queries.with_loader(num_workers, False), device, scales)
    ranks = torch.argsort(q @ db.T, dim=1, descending=True)
    return revisitop_map(ranks, data.gnd, kappas=kappas)
