"""Forward + backward workloads for bench_losses.py: one closure per (loss, implementation, B).

Embeddings (B, 128) float32, 4 samples per class (an MPerClassSampler batch), fixed seed. Each closure
computes the loss and its gradient w.r.t. the embeddings (and the proxies, for proxy losses).
impl: "ssml" (ours), "pml" (pytorch-metric-learning 2.9, configured to the same distance / semantics),
"plain" (NT-Xent only: the straightforward O(B^2) PyTorch formulation of PML's semantics).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

D, M = 128, 4


def _data(B, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g)
    y = torch.arange(B // M).repeat_interleave(M)[:B]
    if len(y) < B:
        y = torch.cat([y, torch.full((B - len(y),), int(y.max()) + 1 if len(y) else 0)])
    return x, y


def plain_ntxent(x, y, temperature):
    """PML's NT-Xent semantics in plain PyTorch: each positive pair against all negatives of its anchor."""
    s = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T / temperature
    same = y[:, None] == y[None, :]
    pos = same & ~torch.eye(len(y), dtype=torch.bool)
    neg_lse = torch.logsumexp(s.masked_fill(same, float("-inf")), dim=1, keepdim=True)
    return F.softplus(neg_lse - s)[pos].mean()


def _ssml(name, B):
    from ssml_fast import losses as L
    n_classes = B // M + 1
    return {
        "contrastive": lambda: L.ContrastiveLoss(0.0, 1.0),
        "contrastive_hadsell": lambda: L.ContrastiveLoss(form="hadsell"),
        "ntxent": lambda: L.NTXentLoss(0.07),
        "multi_similarity": lambda: L.MultiSimilarityLoss(),
        "lifted": lambda: L.LiftedStructureLoss(1.0, 0.0),
        "lifted_generalized": lambda: L.LiftedStructureLoss(1.0, 0.0, generalized=True),
        "npair": lambda: L.NPairLoss(),
        "proxy_nca": lambda: L.ProxyNCALoss(n_classes, D),
        "proxy_anchor": lambda: L.ProxyAnchorLoss(n_classes, D),
        "smooth_ap": lambda: L.SmoothAPLoss(0.01, include_query=True),
        "histogram": lambda: L.HistogramLoss(100),
        "triplet": lambda: L.TripletMarginLoss(0.2),
        "insclr": lambda: L.InsCLRContrastiveLoss(),
        "spreading": lambda: L.SpreadingLoss(),
        "relaxed_contrastive": lambda: L.RelaxedContrastiveLoss(),
        "self_distillation_kl": lambda: L.SelfDistillationKL(),
    }[name]()


def _pml(name, B):
    from pytorch_metric_learning import distances, losses as P, reducers
    n_classes = B // M + 1
    euclid = distances.LpDistance(normalize_embeddings=False)
    return {
        "contrastive": lambda: P.ContrastiveLoss(0.0, 1.0, distance=euclid),
        "ntxent": lambda: P.NTXentLoss(0.07),
        "multi_similarity": lambda: P.MultiSimilarityLoss(),
        "lifted": lambda: P.LiftedStructureLoss(1.0, 0.0, distance=euclid),
        "lifted_generalized": lambda: P.GeneralizedLiftedStructureLoss(1.0, 0.0, distance=euclid),
        "npair": lambda: P.NPairsLoss(),
        "proxy_nca": lambda: P.ProxyNCALoss(n_classes, D),
        "proxy_anchor": lambda: P.ProxyAnchorLoss(n_classes, D),
        "smooth_ap": lambda: P.SmoothAPLoss(temperature=0.01),
        "histogram": lambda: P.HistogramLoss(n_bins=100),
        "triplet": lambda: P.TripletMarginLoss(0.2, distance=euclid, reducer=reducers.AvgNonZeroReducer()),
    }[name]()


PML_HAS = {"contrastive", "ntxent", "multi_similarity", "lifted", "lifted_generalized", "npair", "proxy_nca",
           "proxy_anchor", "smooth_ap", "histogram", "triplet"}
SSML_ONLY = {"contrastive_hadsell", "insclr", "spreading", "relaxed_contrastive", "self_distillation_kl"}
NAMES = sorted(PML_HAS | SSML_ONLY)


def make_workload(impl: str, B: int):
    """impl = "<loss>:<ssml|pml|plain>" -> a closure running forward + backward once."""
    name, kind = impl.split(":")
    x, y = _data(B)
    x.requires_grad_(True)
    if kind == "plain":
        assert name == "ntxent"

        def run():
            x.grad = None
            plain_ntxent(x, y, 0.07).backward()
        return run
    loss = _ssml(name, B) if kind == "ssml" else _pml(name, B)
    if name == "spreading":
        xa = (x.detach() + 0.1 * torch.randn_like(x)).requires_grad_(True)
        args = (xa,)
    elif name == "relaxed_contrastive":
        args = (torch.rand(B, B, generator=torch.Generator().manual_seed(1)),)
    elif name == "self_distillation_kl":
        args = (torch.randn(B, 2 * D, generator=torch.Generator().manual_seed(2)),)
    else:
        args = (y,)

    def run():
        x.grad = None
        loss.zero_grad(set_to_none=True)
        loss(x, *args).backward()
    return run
