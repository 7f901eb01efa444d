"""DistributedLossWrapper / DistributedMinerWrapper: any loss (and miner) on the batch of all ranks.

    loss_fn = DistributedLossWrapper(losses.TripletMarginLoss(margin=0.2), miner=miners.BatchHardMiner())
    loss = loss_fn(model(x_local), labels_local)     # under DDP: the loss of the concatenated batch
    loss.backward()                                   # DDP averages: the single-process gradient

What is exact (tests/test_distributed.py proves it on 2 gloo processes): every rank gathers the rows of
all ranks in rank order (with gradient, `gather.all_gather_with_grad`), mines and computes the loss on
that global batch -- the same value on every rank, equal to the single-process loss on the concatenated
batch -- and the gather's backward hands rank r the sum over ranks of dL/dz_r, i.e. W * dL/dz_r. DDP
divides the summed parameter gradients by W, so the averaged gradient is the single-process gradient.
Do NOT multiply the loss by the world size (the advice for PML's wrapper, PML #363).

The price: the loss (not the network) is computed in full on every rank, as one process would on the
global batch. Labels and sample ids must mean the same thing on every rank (dataset indices, not
positions in the local batch).

Arguments are gathered by kind: a tensor with a row dimension (embeddings, labels, ref_emb, ref_labels,
ids, teacher embeddings, enqueue masks ...) is gathered row-wise; a tuple/list of index tensors is an
`indices_tuple` of local positions (PML's third argument, or the indices_tuple keyword), shifted to
positions in the gathered batch (anchors by the embeddings' offset, positives / negatives by ref_emb's
when given); anything else (numbers, other tuples such as STMLLoss's memory) passes unchanged. A tensor
that is already the same on every rank (a memory bank's rows given as ref_emb) must not be passed as a
tensor argument -- it would be gathered W times; gather the batch with `gather_batch` and call the loss
inside `gathered()` instead. Memories
inside the loss (CrossBatchMemory's queue) see the gathered batch once: the call runs inside `gathered()`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from .gather import active_world, all_gather_with_grad, gathered, row_counts

# PML call shape: (embeddings, labels, indices_tuple, ref_emb, ref_labels)
_INDICES_POSITION, _REF_POSITION = 2, 3


class _Gatherer:
    """Gathers the arguments of one call; remembers each tensor's row offsets for index shifting."""

    def __init__(self, group):
        self.group = group

    def tensor(self, t: torch.Tensor):
        if t.dim() == 0:
            return t, (0, 0)
        sizes = row_counts(t.shape[0], t.device, self.group)
        start = sum(sizes[: dist.get_rank(self.group)])
        return all_gather_with_grad(t, self.group, sizes), (start, sizes)

    def indices(self, tup, anchor_offset: int, ref_offset: int):
        tup = tuple(tup)
        if len(tup) not in (3, 4):
            raise ValueError(f"indices_tuple must hold 3 (triplets) or 4 (pairs) tensors, got {len(tup)}")
        # (a, p, n) or (a1, p, a2, n): anchors index the embeddings, the others the reference set.
        shifts = (anchor_offset, ref_offset, ref_offset) if len(tup) == 3 else \
            (anchor_offset, ref_offset, anchor_offset, ref_offset)
        out = []
        for t, s in zip(tup, shifts):
            t = torch.as_tensor(t).long()
            out.append(all_gather_with_grad(t + s, self.group))
        return tuple(out)


def _is_indices(x) -> bool:
    return isinstance(x, (tuple, list)) and len(x) > 0 and all(torch.is_tensor(t) for t in x)


def gather_call(args: tuple, kwargs: dict, group=None) -> tuple[tuple, dict]:
    """(args, kwargs) of a loss call with every batch tensor gathered (see the module docstring)."""
    g = _Gatherer(group)
    args, kwargs = list(args), dict(kwargs)
    ref_key = "ref_emb" if "ref_emb" in kwargs else (_REF_POSITION if len(args) > _REF_POSITION else None)
    offsets = {}
    for key in list(range(len(args))) + list(kwargs):
        holder = args if isinstance(key, int) else kwargs
        v = holder[key]
        if torch.is_tensor(v):
            holder[key], offsets[key] = g.tensor(v)
    anchor_off = offsets.get(0, (0, None))[0]
    ref_off = offsets[ref_key][0] if ref_key is not None and ref_key in offsets else anchor_off
    for key in (_INDICES_POSITION, "indices_tuple"):
        holder = args if isinstance(key, int) else kwargs
        if (key in holder if isinstance(key, str) else key < len(holder)) and _is_indices(holder[key]):
            holder[key] = g.indices(holder[key], anchor_off, ref_off)
    return tuple(args), kwargs


class DistributedLossWrapper(nn.Module):
    """`loss` (and optionally `miner`) computed on the gathered batch of every rank; identity on one
    process. Attributes of the wrapped loss (num_active, parts, ...) are readable on the wrapper."""

    def __init__(self, loss: nn.Module, miner: Optional[nn.Module] = None, *, process_group=None):
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be a callable loss module, got {type(loss).__name__}")
        if miner is not None and not callable(miner):
            raise TypeError(f"miner must be a callable miner, got {type(miner).__name__}")
        self.loss = loss
        self.miner = miner
        self.process_group = process_group

    def forward(self, *args, **kwargs):
        if not args:
            raise TypeError("DistributedLossWrapper needs the embeddings as its first argument")
        if self.miner is not None:
            given = kwargs.get("indices_tuple", args[2] if len(args) > 2 else None)
            if given is not None:
                raise ValueError("give indices_tuple or a miner to DistributedLossWrapper, not both")
        if active_world(self.process_group) > 1:
            args, kwargs = gather_call(args, kwargs, self.process_group)
        with gathered():
            if self.miner is not None:
                emb = args[0]
                labels = kwargs.get("labels", args[1] if len(args) > 1 else None)
                ref_emb = kwargs.get("ref_emb", args[3] if len(args) > 3 else None)
                ref_labels = kwargs.get("ref_labels", args[4] if len(args) > 4 else None)
                mined = self.miner(emb, labels, ref_emb, ref_labels)
                args = (emb, labels, mined, *args[3:])
                kwargs = {k: v for k, v in kwargs.items() if k not in ("labels", "indices_tuple")}
            return self.loss(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["loss"], name)


class DistributedMinerWrapper(nn.Module):
    """`miner` on the gathered batch: the returned indices are positions in the gathered batch, to be
    passed to a DistributedLossWrapper-wrapped loss called inside `gathered()` or to a loss given the
    gathered embeddings."""

    def __init__(self, miner: nn.Module, *, process_group=None):
        super().__init__()
        if not callable(miner):
            raise TypeError(f"miner must be a callable miner, got {type(miner).__name__}")
        self.miner = miner
        self.process_group = process_group

    def forward(self, embeddings, labels=None, ref_emb=None, ref_labels=None):
        if active_world(self.process_group) > 1:
            g = _Gatherer(self.process_group)
            embeddings = g.tensor(embeddings)[0].detach()
            labels = None if labels is None else g.tensor(labels)[0]
            ref_emb = None if ref_emb is None else g.tensor(ref_emb)[0].detach()
            ref_labels = None if ref_labels is None else g.tensor(ref_labels)[0]
        with gathered():
            return self.miner(embeddings, labels, ref_emb, ref_labels)
