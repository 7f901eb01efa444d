"""Losses and miners by name, for configs: `loss: multi_similarity` with `loss_kwargs: {alpha: 2}`."""
from __future__ import annotations

import inspect

from .. import losses, miners

LOSSES = {
    "triplet": "TripletMarginLoss",
    "contrastive": "ContrastiveLoss",
    "multi_similarity": "MultiSimilarityLoss",
    "ntxent": "NTXentLoss",
    "lifted": "LiftedStructureLoss",
    "npair": "NPairLoss",
    "proxy_nca": "ProxyNCALoss",
    "proxy_anchor": "ProxyAnchorLoss",
    "smooth_ap": "SmoothAPLoss",
    "histogram": "HistogramLoss",
    # issue 12, proxy / classification family (learnable class weights: their own parameter group)
    "arcface": "ArcFaceLoss",
    "subcenter_arcface": "SubCenterArcFaceLoss",
    "cosface": "CosFaceLoss",
    "large_margin_softmax": "LargeMarginSoftmaxLoss",
    "sphereface": "SphereFaceLoss",
    "normalized_softmax": "NormalizedSoftmaxLoss",
    "soft_triple": "SoftTripleLoss",
    "center": "CenterLoss",
    # issue 12, pair / tuple family
    "circle": "CircleLoss",
    "angular": "AngularLoss",
    "margin": "MarginLoss",
    "supcon": "SupConLoss",
    "log_ratio": "LogRatioLoss",
}
# loss_kwargs a `method:loss` spec (`supervised:arcface`) starts from: the supervised method's own choice
# where it has one, otherwise the loss's defaults (PML's where PML has the loss).
SPEC_LOSS_KWARGS = {
    "triplet": {"margin": 0.2, "mining": "all"},
}
MINERS = {
    "batch_hard": "BatchHardMiner",
    "semi_hard": "SemiHardMiner",
    "multi_similarity": "MultiSimilarityMiner",
    "distance_weighted": "DistanceWeightedMiner",
}


def _resolve(kind: str, module, table: dict, name: str):
    cls_name = table.get(name, name)
    cls = getattr(module, cls_name, None)
    if not inspect.isclass(cls):
        raise ValueError(f"unknown {kind} {name!r}; available: {', '.join(sorted(table))} "
                         f"(or a class name of ssml_fast.{module.__name__.rsplit('.', 1)[-1]})")
    return cls


def loss_class(name: str) -> type:
    """The loss class of a LOSSES name or of an ssml_fast.losses class name; ValueError naming the choices."""
    return _resolve("loss", losses, LOSSES, name)


def build_loss(name: str, kwargs: dict, *, num_classes: int, embedding_size: int):
    """An instance of the named loss; num_classes / embedding_size are filled in where the loss requires them
    (the proxy family). Where they are optional (MarginLoss: one beta per class only with num_classes) the
    loss keeps its own default, PML's single beta."""
    cls = loss_class(name)
    params = inspect.signature(cls).parameters
    kwargs = dict(kwargs)
    for key, value in (("num_classes", num_classes), ("embedding_size", embedding_size)):
        if key in params and params[key].default is inspect.Parameter.empty:
            kwargs.setdefault(key, value)
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise ValueError(f"loss_kwargs: {cls.__name__} has no argument {unknown[0]!r}; "
                         f"it takes {', '.join(p for p in params if p != 'self')}")
    return cls(**kwargs)


def build_miner(name, kwargs: dict):
    if name is None:
        if kwargs:
            raise ValueError("miner_kwargs given without a miner")
        return None
    cls = _resolve("miner", miners, MINERS, name)
    params = inspect.signature(cls).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise ValueError(f"miner_kwargs: {cls.__name__} has no argument {unknown[0]!r}; "
                         f"it takes {', '.join(params)}")
    return cls(**kwargs)
