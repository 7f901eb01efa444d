"""The registry of every loss and miner the robustness tests sweep (issue 16), built from the packages'
`__all__`: a new MetricLoss or BaseMiner subclass exported there is covered automatically (default
constructor, PML call shape); a loss with another call shape must be added to SPECIAL_LOSSES, which
test_every_exported_loss_and_miner_is_covered enforces."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

from ssml_fast import distances as Dist
from ssml_fast import losses as L
from ssml_fast import miners as M
from ssml_fast import reducers as Red

D = 8  # embedding size of every case
C = 4  # classes of the proxy losses

# Extra constructor arguments beyond the defaults, per class name: each runs as its own case.
LOSS_VARIANTS = {
    "TripletMarginLoss": {"hard": dict(mining="hard"), "semihard": dict(mining="semihard"),
                          "hard_soft": dict(mining="hard", soft=True), "cosine": dict(distance="cosine"),
                          # general (non-fused) paths of the PML surface
                          "smooth": dict(smooth_loss=True), "swap": dict(swap=True),
                          "cosine_similarity_mean": dict(distance=Dist.CosineSimilarity(), reducer=Red.MeanReducer()),
                          "negative_margin": dict(margin=-0.1),
                          "threshold": dict(reducer=Red.ThresholdReducer(low=0.01))},
    "ContrastiveLoss": {"hadsell": dict(form="hadsell"), "cosine": dict(form="cosine"),
                        "sqeuclidean": dict(distance="sqeuclidean"),
                        "cosine_similarity": dict(distance=Dist.CosineSimilarity(), pos_margin=1.0, neg_margin=0.5),
                        "class_weighted": dict(reducer=Red.ClassWeightedReducer(torch.ones(64)))},
    "LiftedStructureLoss": {"generalized": dict(generalized=True), "avg_nonzero": dict(reducer=Red.AvgNonZeroReducer()),
                            "cosine_similarity": dict(distance=Dist.CosineSimilarity())},
    "GeneralizedLiftedStructureLoss": {"avg_nonzero": dict(reducer=Red.AvgNonZeroReducer())},
    "MultiSimilarityLoss": {"dot": dict(similarity="dot"), "lp": dict(distance=Dist.LpDistance()),
                            "avg_nonzero": dict(reducer=Red.AvgNonZeroReducer())},
    "NPairLoss": {"all": dict(pairs="all")},
    "NPairsLoss": {"lp": dict(distance=Dist.LpDistance()), "sum": dict(reducer=Red.SumReducer())},
    "NTXentLoss": {"dot": dict(similarity="dot"), "lp": dict(distance=Dist.LpDistance()),
                   "per_anchor": dict(reducer=Red.PerAnchorReducer(Red.AvgNonZeroReducer()))},
    "HistogramLoss": {"delta": dict(delta=0.1)},
    "ProxyAnchorLoss": {"mean": dict(reducer=Red.MeanReducer())},
    "ProxyNCALoss": {"cosine": dict(distance="cosine"), "exclude_positive": dict(exclude_positive=True),
                     "sum": dict(reducer=Red.SumReducer())},
    "SelfSupervisedLoss": {"asymmetric": dict(loss=L.TripletMarginLoss(), symmetric=False),
                           "ntxent": dict(loss=L.NTXentLoss())},
    "SmoothAPLoss": {"include_query": dict(include_query=True)},
}
MINER_VARIANTS = {
    "SemiHardMiner": {"nearest": dict(mode="nearest"), "cosine": dict(distance="cosine"),
                      "nearest_cosine": dict(mode="nearest", distance="cosine")},
    "BatchHardMiner": {"cosine": dict(distance="cosine")},
    "MultiSimilarityMiner": {"dot": dict(similarity="dot"), "lp": dict(distance=Dist.LpDistance())},
    "TripletMarginMiner": {"hard": dict(type_of_triplets="hard"), "semihard": dict(type_of_triplets="semihard"),
                           "easy": dict(type_of_triplets="easy"), "cosine": dict(distance=Dist.CosineSimilarity())},
}


def _other_inputs_spreading(x, g):
    return (x + 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device),)


def _other_inputs_relaxed(x, g):
    return (torch.rand(x.shape[0], x.shape[0], generator=g, dtype=x.dtype).to(x.device),)


def _other_inputs_kl(x, g):
    return (torch.randn(x.shape[0], D + 3, generator=g, dtype=x.dtype).to(x.device),)


def _other_inputs_stml(x, g):
    n = x.shape[0]
    student_g = torch.randn(n, D + 3, generator=g, dtype=x.dtype).to(x.device)
    teacher_g = student_g + 0.1 * torch.randn(n, D + 3, generator=g, dtype=x.dtype).to(x.device)
    return student_g, teacher_g, (torch.arange(n) // 2).to(x.device)  # two views per image


def _other_inputs_self_supervised(x, g):
    return (x + 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device),)  # a second view


# Losses whose call is not the PML shape: name -> builds the extra arguments from the embeddings (B, D).
SPECIAL_LOSSES = {
    "SpreadingLoss": _other_inputs_spreading,
    "RelaxedContrastiveLoss": _other_inputs_relaxed,
    "SelfDistillationKL": _other_inputs_kl,
    "STMLLoss": _other_inputs_stml,
    "SelfSupervisedLoss": _other_inputs_self_supervised,
}
# Constructor arguments of the default case, where the defaults do not fit the small test batches.
DEFAULT_KWARGS = {"STMLLoss": dict(k=1), "SelfSupervisedLoss": dict(loss=L.TripletMarginLoss()),
                  # the paper's centre update moves the centres in every training forward (stateful by design,
                  # tests/test_losses_proxy_family.py checks it); these cases call one instance repeatedly
                  "CenterLoss": dict(center_update="gradient")}
NOT_LOSSES = {"MetricLoss", "relative_distance"}  # the base class; a helper function (tested via its losses)
NOT_MINERS = {"BaseMiner"}


def _construct(cls, kwargs):
    params = inspect.signature(cls).parameters
    kw = dict(kwargs)
    if "num_classes" in params:
        kw.setdefault("num_classes", C)
    if "embedding_size" in params:
        kw.setdefault("embedding_size", D)
    return cls(**kw)


@dataclass
class LossCase:
    id: str
    cls: type
    kwargs: dict = field(default_factory=dict)

    @property
    def pml_shape(self) -> bool:
        return issubclass(self.cls, L.MetricLoss)

    def make(self):
        return _construct(self.cls, self.kwargs)

    def call(self, loss, x, labels, *, indices_tuple=None, ref_emb=None, ref_labels=None, seed=0):
        """The loss on embeddings x (B, D) with labels (B,); special losses get their own extra inputs."""
        if self.pml_shape:
            return loss(x, labels, indices_tuple, ref_emb, ref_labels)
        g = torch.Generator().manual_seed(seed)
        # built from the float32 values for half inputs, so a bf16 run sees the same extra inputs
        base = x.detach().float() if x.dtype in (torch.float16, torch.bfloat16) else x.detach()
        return loss(x, *SPECIAL_LOSSES[self.cls.__name__](base, g))

    def supports_ref_emb(self, loss) -> bool:
        return self.pml_shape and bool(loss.supports_ref_emb)


@dataclass
class MinerCase:
    id: str
    cls: type
    kwargs: dict = field(default_factory=dict)

    def make(self, seed=0):
        kw = dict(self.kwargs)
        if "generator" in inspect.signature(self.cls).parameters:
            kw.setdefault("generator", torch.Generator().manual_seed(seed))
        return self.cls(**kw)


def _exported(module, skip):
    seen, out = set(), []
    for name in module.__all__:
        obj = getattr(module, name)
        if name in skip or obj in seen:  # InfoNCE is NTXentLoss
            continue
        seen.add(obj)
        out.append((getattr(obj, "__name__", name), obj))
    return out


def loss_cases() -> list[LossCase]:
    cases = []
    for name, obj in _exported(L, NOT_LOSSES):
        if not inspect.isclass(obj):
            continue
        base = DEFAULT_KWARGS.get(name, {})
        cases.append(LossCase(name, obj, dict(base)))
        cases += [LossCase(f"{name}[{v}]", obj, {**base, **kw}) for v, kw in LOSS_VARIANTS.get(name, {}).items()]
    return cases


def miner_cases() -> list[MinerCase]:
    cases = []
    for name, obj in _exported(M, NOT_MINERS):
        cases.append(MinerCase(name, obj))
        cases += [MinerCase(f"{name}[{v}]", obj, kw) for v, kw in MINER_VARIANTS.get(name, {}).items()]
    return cases


LOSS_CASES = loss_cases()
MINER_CASES = miner_cases()
PML_LOSS_CASES = [c for c in LOSS_CASES if c.pml_shape]


def by_id(cases):
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])


def labelled_batch(B=12, n_classes=3, dtype=torch.float32, seed=0, device="cpu"):
    """B embeddings with every class present (labels cycle through the classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=dtype)
    y = torch.arange(B) % n_classes
    return x.to(device), y.to(device)


def test_every_exported_loss_and_miner_is_covered():
    for name, obj in _exported(L, NOT_LOSSES):
        assert inspect.isclass(obj), f"{name} in ssml_fast.losses.__all__ is not a class: add it to NOT_LOSSES"
        assert issubclass(obj, L.MetricLoss) or name in SPECIAL_LOSSES, (
            f"{name} does not use the PML call shape: add its inputs to SPECIAL_LOSSES")
    for name, obj in _exported(M, NOT_MINERS):
        assert issubclass(obj, M.BaseMiner), f"{name} in ssml_fast.miners.__all__ is not a BaseMiner"
    for name in LOSS_VARIANTS:
        assert name in L.__all__, f"stale registry entry {name}"
    for name in MINER_VARIANTS:
        assert name in M.__all__, f"stale registry entry {name}"
    ids = [c.id for c in LOSS_CASES]
    assert len(ids) == len(set(ids)) and len(LOSS_CASES) >= 25


@by_id(LOSS_CASES)
def test_case_runs_on_a_plain_batch(case):
    """The registry's calls are valid: every case gives a finite loss with a gradient on a plain batch."""
    x, y = labelled_batch()
    x.requires_grad_(True)
    out = case.call(case.make(), x, y)
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(x.grad).all()
