"""Reducers with PML's protocol: `reducer(loss_dict, embeddings, labels) -> 0-d loss`.

loss_dict maps a sub-loss name to {"losses": per-element tensor (or the number 0), "indices": what each
element belongs to, "reduction_type": "element" | "pos_pair" | "neg_pair" | "triplet" | "already_reduced"}
(plus "divisor" for DivisorReducer), exactly as pytorch-metric-learning's losses build it, so these
reducers work inside PML losses and PML's reducers inside ours. The common ones (AvgNonZeroReducer,
MeanReducer, SumReducer, ours or PML's) are recognised by the losses and folded into their fused paths
(`kind`); any other reducer gets the per-element losses through this protocol.
A zero loss (no pairs / triplets) is a 0 connected to the embeddings that stays 0 for NaN inputs.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["BaseReducer", "MeanReducer", "SumReducer", "ThresholdReducer", "AvgNonZeroReducer",
           "DoNothingReducer", "PerAnchorReducer", "MultipleReducers", "ClassWeightedReducer", "DivisorReducer",
           "kind"]

REDUCTION_TYPES = ("element", "pos_pair", "neg_pair", "triplet", "already_reduced")


def _zero(embeddings):
    from ..losses._pairs import zero_loss  # the losses' connected zero (import here: losses import us)

    return zero_loss(embeddings)


class BaseReducer(nn.Module):
    def forward(self, loss_dict, embeddings, labels):
        if len(loss_dict) != 1:
            raise ValueError(f"{type(self).__name__} reduces one sub-loss at a time, got {list(loss_dict)}")
        (info,) = loss_dict.values()
        losses, indices, reduction_type, kwargs = self.unpack_loss_info(info)
        return self.reduce_the_loss(losses, indices, reduction_type, kwargs, embeddings, labels)

    def unpack_loss_info(self, info):
        return info["losses"], info["indices"], info["reduction_type"], {}

    def reduce_the_loss(self, losses, indices, reduction_type, kwargs, embeddings, labels):
        if not torch.is_tensor(losses) and losses == 0:
            return self.zero_loss(embeddings)
        if reduction_type not in REDUCTION_TYPES:
            raise ValueError(f"unknown reduction_type {reduction_type!r}")
        return getattr(self, f"{reduction_type}_reduction")(losses, indices, embeddings, labels, **kwargs)

    def already_reduced_reduction(self, losses, indices, embeddings, labels):
        if losses.ndim != 0 and len(losses) != 1:
            raise ValueError("an already_reduced loss must hold one value")
        return losses.reshape(())

    def element_reduction(self, losses, indices, embeddings, labels):
        raise NotImplementedError

    def pos_pair_reduction(self, losses, indices, embeddings, labels):
        return self.element_reduction(losses, indices, embeddings, labels)

    def neg_pair_reduction(self, losses, indices, embeddings, labels):
        return self.element_reduction(losses, indices, embeddings, labels)

    def triplet_reduction(self, losses, indices, embeddings, labels):
        return self.element_reduction(losses, indices, embeddings, labels)

    def zero_loss(self, embeddings):
        return _zero(embeddings)


class MeanReducer(BaseReducer):
    """The mean over all elements (an empty set gives the connected zero)."""

    def element_reduction(self, losses, indices, embeddings, labels):
        return losses.mean() if losses.numel() else self.zero_loss(embeddings)


class SumReducer(BaseReducer):
    def element_reduction(self, losses, indices, embeddings, labels):
        return losses.sum() if losses.numel() else self.zero_loss(embeddings)


class ThresholdReducer(BaseReducer):
    """The mean over the elements with low < loss < high (either bound optional)."""

    def __init__(self, low=None, high=None):
        super().__init__()
        if low is None and high is None:
            raise ValueError("ThresholdReducer: give at least one of low and high")
        self.low, self.high = low, high

    def element_reduction(self, losses, indices, embeddings, labels):
        keep = torch.ones_like(losses, dtype=torch.bool)
        if self.low is not None:
            keep &= losses > self.low
        if self.high is not None:
            keep &= losses < self.high
        n = keep.sum()
        # a NaN loss (neither > low nor < high) stays in the sum: a diverged model is not hidden
        total = torch.where(keep | losses.isnan(), losses, 0.0).sum()
        # nothing past the filter: 0, or NaN when the losses are NaN (total * 0), as the fused paths do
        return torch.where(n > 0, total / n.clamp_min(1), total * 0)


class AvgNonZeroReducer(ThresholdReducer):
    """The mean over the elements with a loss > 0 (PML's default for the margin losses)."""

    def __init__(self):
        super().__init__(low=0)


class DoNothingReducer(BaseReducer):
    """Returns the loss_dict itself (the per-element losses), unreduced."""

    def forward(self, loss_dict, embeddings, labels):
        return loss_dict


class DivisorReducer(BaseReducer):
    """sum(losses) / loss_info["divisor"] (ProxyAnchorLoss's reduction); divisor 0 gives zero."""

    def unpack_loss_info(self, info):
        losses, indices, reduction_type, kwargs = super().unpack_loss_info(info)
        if reduction_type != "already_reduced":
            kwargs = {"divisor": info["divisor"]}
        return losses, indices, reduction_type, kwargs

    def element_reduction(self, losses, indices, embeddings, labels, divisor=1):
        if divisor == 0:
            return self.zero_loss(embeddings)
        return losses.sum() / divisor

    def pos_pair_reduction(self, *args, **kwargs):
        return self.element_reduction(*args, **kwargs)

    def neg_pair_reduction(self, *args, **kwargs):
        return self.element_reduction(*args, **kwargs)

    def triplet_reduction(self, *args, **kwargs):
        return self.element_reduction(*args, **kwargs)


class ClassWeightedReducer(BaseReducer):
    """mean(loss * weights[label of the element's anchor])."""

    def __init__(self, weights):
        super().__init__()
        self.weights = torch.as_tensor(weights)

    def element_reduction(self, losses, indices, embeddings, labels):
        return self._weighted(losses, indices, labels)

    def pos_pair_reduction(self, losses, indices, embeddings, labels):
        return self._weighted(losses, indices[0], labels)

    def neg_pair_reduction(self, losses, indices, embeddings, labels):
        return self._weighted(losses, indices[0], labels)

    def triplet_reduction(self, losses, indices, embeddings, labels):
        return self._weighted(losses, indices[0], labels)

    def _weighted(self, losses, anchor_idx, labels):
        if losses.numel() == 0:
            return self.zero_loss(labels)
        if labels is None:
            raise ValueError("ClassWeightedReducer needs labels")
        w = self.weights.to(device=losses.device, dtype=losses.dtype)
        return torch.mean(losses * w[labels[anchor_idx]])


def _row_mean(x, count):
    return torch.where(count > 0, x.sum(dim=1) / count.clamp_min(1), torch.zeros_like(count, dtype=x.dtype))


class PerAnchorReducer(BaseReducer):
    """Pair losses averaged per anchor first (anchors without pairs give 0), then `reducer` (default
    MeanReducer) over the B anchors as element losses."""

    def __init__(self, reducer=None, aggregation_func=_row_mean):
        super().__init__()
        self.reducer = MeanReducer() if reducer is None else reducer
        self.aggregation_func = aggregation_func

    def element_reduction(self, losses, indices, embeddings, labels):
        return self.reducer({"loss": {"losses": losses, "indices": indices, "reduction_type": "element"}},
                            embeddings, labels)

    def _per_anchor(self, losses, indices, embeddings, labels):
        B = embeddings.shape[0]
        anchors, others = indices
        R = max(B, int(others.max()) + 1) if others.numel() else B
        flat = anchors * R + others
        # one value per (anchor, other) cell, the last one written wins (as an index assignment would)
        table = torch.zeros(B * R, dtype=losses.dtype, device=losses.device).index_put((flat,), losses)
        filled = torch.zeros(B * R, dtype=torch.bool, device=losses.device).index_put(
            (flat,), torch.ones_like(flat, dtype=torch.bool))
        count = filled.view(B, R).sum(dim=1).to(losses.dtype)
        out = self.aggregation_func(table.view(B, R), count)
        return self.reducer({"loss": {"losses": out, "indices": torch.arange(B, device=losses.device),
                                      "reduction_type": "element"}}, embeddings, labels)

    def pos_pair_reduction(self, *args):
        return self._per_anchor(*args)

    def neg_pair_reduction(self, *args):
        return self._per_anchor(*args)

    def triplet_reduction(self, *args):
        raise NotImplementedError("PerAnchorReducer: triplet losses are not supported (as in PML)")


class MultipleReducers(BaseReducer):
    """One reducer per sub-loss name (default_reducer, MeanReducer by default, for the others); the reduced
    sub-losses are summed."""

    def __init__(self, reducers: dict, default_reducer=None):
        super().__init__()
        self.reducers = nn.ModuleDict(reducers)
        self.default_reducer = MeanReducer() if default_reducer is None else default_reducer

    def forward(self, loss_dict, embeddings, labels):
        total = None
        for name, info in loss_dict.items():
            r = self.reducers[name] if name in self.reducers else self.default_reducer
            v = r({name: info}, embeddings, labels)
            total = v if total is None else total + v
        return total if total is not None else self.zero_loss(embeddings)


def kind(reducer) -> str | None:
    """"mean_nonzero" / "mean" / "sum" when `reducer` (ours or PML's, exact classes) is one the fused
    paths implement, else None."""
    t = type(reducer)
    ours = t.__module__ == __name__
    pml = t.__module__.startswith("pytorch_metric_learning.reducers")
    if not (ours or pml):
        return None
    if t.__name__ == "AvgNonZeroReducer":
        return "mean_nonzero"
    if t.__name__ == "ThresholdReducer" and getattr(reducer, "low", None) == 0 and getattr(reducer, "high", 1) is None:
        return "mean_nonzero"
    return {"MeanReducer": "mean", "SumReducer": "sum"}.get(t.__name__)


def from_reduction(reduction: str):
    """Our `reduction=` strings as reducer objects."""
    return {"mean_nonzero": AvgNonZeroReducer, "mean": MeanReducer, "sum": SumReducer}[reduction]()
