"""Triplet-loss workloads (forward + backward) shared by bench_triplet.py and the memory probe."""
from __future__ import annotations

import torch

import ssml_fast  # noqa: F401
from ssml_fast import ops


def pk_batch(B: int, D: int = 128, per_class: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, generator=g)
    labels = torch.arange(B // per_class).repeat_interleave(per_class)
    return emb, labels


def pxk_plain_batch_all(emb, labels, margin, per_class):
    """Best plain-PyTorch batch-all: needs P x K batches (builds a B x (K-1) x B tensor)."""
    B = emb.shape[0]
    dist = torch.cdist(emb, emb)
    same = labels[:, None] == labels[None, :]
    pos_mask = same & ~torch.eye(B, dtype=torch.bool)
    pos_idx = pos_mask.nonzero()[:, 1].view(B, per_class - 1)
    d_ap = dist.gather(1, pos_idx)
    v = (d_ap[:, :, None] - dist[:, None, :] + margin).clamp_min(0) * (~same)[:, None, :]
    active = (v > 0).sum()
    return v.sum() / active.clamp_min(1)


def make_workload(impl: str, B: int, margin: float = 0.2, per_class: int = 4, D: int = 128):
    emb, labels = pk_batch(B, D, per_class)
    x = emb.clone().requires_grad_(True)
    if impl == "ssml_all":
        f = lambda: ops.triplet_margin_loss(x, labels, margin, "all")  # noqa: E731
    elif impl == "ssml_hard":
        f = lambda: ops.triplet_margin_loss(x, labels, margin, "hard")  # noqa: E731
    elif impl == "ssml_semihard":
        f = lambda: ops.triplet_margin_loss(x, labels, margin, "semihard")  # noqa: E731
    elif impl == "plain_pxk_all":
        f = lambda: pxk_plain_batch_all(x, labels, margin, per_class)  # noqa: E731
    elif impl == "cdist_floor":
        f = lambda: torch.cdist(x, x).sum()  # noqa: E731
    elif impl in ("pml_all", "pml_hard"):
        from pytorch_metric_learning import distances, losses, miners, reducers

        dist = distances.LpDistance(normalize_embeddings=False)
        loss = losses.TripletMarginLoss(margin=margin, distance=dist, reducer=reducers.AvgNonZeroReducer())
        miner = miners.BatchHardMiner(distance=dist) if impl == "pml_hard" else None
        f = lambda: loss(x, labels, miner(x, labels) if miner else None)  # noqa: E731
    else:
        raise ValueError(impl)

    def run():
        x.grad = None
        f().backward()

    return run
