"""TripletMarginLoss: PML's TripletMarginLoss, on the fused triplet op whenever the configuration maps onto it."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distances as _distances
from .. import ops
from .. import reducers as _reducers
from .. import _validation as _checks
from . import _pairs
from .base import MetricLoss

TRIPLETS_PER_ANCHOR = "all"


class TripletMarginLoss(MetricLoss):
    """max(0, margin(d(a, p), d(a, n)) + margin) over triplets (PML's TripletMarginLoss and arguments).

    TripletMarginLoss(margin=0.05, swap=False, smooth_loss=False, triplets_per_anchor="all", *,
                      distance=LpDistance(), reducer=AvgNonZeroReducer(), embedding_regularizer=None, ...)
    - distance: a distance object (ours or PML's) or "euclidean" | "sqeuclidean" | "cosine" (raw, un-normalised
      embeddings for the first two, as before); default LpDistance() on L2-normalised embeddings (PML).
    - swap: use d(p, n) instead of d(a, n) when it is smaller; smooth_loss: softplus instead of the hinge;
      triplets_per_anchor: "all", or an int of random triplets per anchor.
    - mining (ours): "all" | "hard" | "semihard" mined inside the fused op; reduction (ours): the reducer as a
      string, "mean_nonzero" | "mean" | "sum"; soft (ours): = smooth_loss.
    - With an `indices_tuple` exactly those triplets are used; pairs (a1, p, a2, n) become the triplets
      (a1, p, n) with a1 == a2, as PML converts them.
    The fused op runs when there is no indices_tuple, triplets_per_anchor="all", no swap, margin >= 0, the
    distance is LpDistance(p=2, power 1 or 2) / CosineSimilarity / a string, and the reducer is AvgNonZero,
    Mean or Sum (smooth_loss with mining "hard"/"semihard" only); anything else takes a general path with
    PML's exact semantics. After each call `num_active` / `num_triplets` (0-d tensors) hold the counts.
    """

    def __init__(self, margin: float = 0.05, swap: bool = False, smooth_loss: bool = False,
                 triplets_per_anchor="all", *, mining: str = "all", distance=None, reducer=None,
                 reduction: str | None = None, soft: bool | None = None, embedding_regularizer=None,
                 embedding_reg_weight: float = 1.0):
        if reduction is not None:
            _checks.check_choice("reduction", reduction, ops.REDUCTIONS)
            if reducer is not None:
                raise ValueError("give reducer or reduction, not both")
            reducer = _reducers.from_reduction(reduction)
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight)
        self.margin = _pairs.check_real("margin", margin)
        for name, v in (("swap", swap), ("smooth_loss", smooth_loss)):
            if not isinstance(v, bool):  # TripletMarginLoss(0.2, "hard") would silently mean swap=True
                raise TypeError(f"{name} must be a bool, got {v!r} (mining / distance are keyword arguments)")
        self.swap = swap
        self.smooth_loss = bool(smooth_loss if soft is None else soft)
        if not (triplets_per_anchor == "all" or (isinstance(triplets_per_anchor, int)
                                                  and not isinstance(triplets_per_anchor, bool)
                                                  and triplets_per_anchor >= 1)):
            raise ValueError(f"triplets_per_anchor must be 'all' or a positive int, got {triplets_per_anchor!r}")
        self.triplets_per_anchor = triplets_per_anchor
        self.mining = _checks.check_choice("mining", mining, ops.MININGS)
        if mining != "all":
            if self._fused_config() is None:
                raise ValueError(f"mining={mining!r} runs in the fused op only: it needs margin >= 0, no swap, "
                                 "triplets_per_anchor='all', an L2 / squared-L2 / cosine distance and an "
                                 "AvgNonZero / Mean / Sum reducer")
        self.num_active = torch.zeros((), dtype=torch.long)
        self.num_triplets = torch.zeros((), dtype=torch.long)

    def default_reducer(self):
        return _reducers.AvgNonZeroReducer()

    @property
    def soft(self) -> bool:
        return self.smooth_loss

    @property
    def reduction(self) -> str | None:
        return self.reduction_kind

    def _fused_config(self):
        """(metric, normalize, reduction) for the fused op, or None."""
        fm = _distances.fused_metric(self.distance)
        kind = self.reduction_kind
        if fm is None or kind is None or self.swap or self.margin < 0 or self.triplets_per_anchor != "all":
            return None
        if self.smooth_loss and self.mining == "all":
            return None
        return fm[0], fm[1], kind

    def empty_loss(self, embeddings, ref_emb):
        device = embeddings.device
        self.num_active = torch.zeros((), dtype=torch.long, device=device)
        self.num_triplets = torch.zeros((), dtype=torch.long, device=device)
        return super().empty_loss(embeddings, ref_emb)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        cfg = self._fused_config() if indices_tuple is None else None
        if cfg is not None:
            return self._fused(cfg, embeddings, labels, ref_emb, ref_labels)
        return self._general(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def compute_loss_ref_starts_with_batch(self, embeddings, labels, ref_emb, ref_labels):
        # The fused op's diagonal exclusion: batch-all / hard / semihard mining over the whole reference minus
        # the self pairs, exactly as on a plain batch (no B x R pair list).
        cfg = self._fused_config()
        if cfg is None:
            return super().compute_loss_ref_starts_with_batch(embeddings, labels, ref_emb, ref_labels)
        return self._fused(cfg, embeddings, labels, ref_emb, ref_labels, ref_starts_with_batch=True)

    def _fused(self, cfg, embeddings, labels, ref_emb, ref_labels, ref_starts_with_batch=False):
        metric, normalize, reduction = cfg
        x, r = embeddings, ref_emb
        if normalize:
            x = F.normalize(x.to(_checks.compute_dtype(x)), dim=1)
            r = None if r is None else F.normalize(r.to(x.dtype), dim=1)
        out = ops.triplet_margin_loss(x, labels, self.margin, self.mining, metric, reduction,
                                      ref_emb=r, ref_labels=ref_labels, soft=self.smooth_loss,
                                      return_stats=True, ref_starts_with_batch=ref_starts_with_batch)
        self.num_active, self.num_triplets = out.num_active, out.num_triplets
        return out.loss

    def _general(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        device = embeddings.device
        a, p, n = _pairs.select_triplets(labels, ref_labels, ref_emb is None, indices_tuple,
                                         self.triplets_per_anchor, B, R, device)
        self.num_triplets = torch.tensor(a.numel(), device=device)
        if a.numel() == 0:
            self.num_active = torch.zeros((), dtype=torch.long, device=device)
            return self.reduce({"loss": {"losses": 0, "indices": None, "reduction_type": "already_reduced"}},
                               embeddings, labels)
        mat = self.matrix(embeddings, ref_emb)
        ap, an = mat[a, p], mat[a, n]
        if self.swap:
            # d(p, n) between reference rows (PML indexes its B x R matrix by p, right for the batch itself)
            pn_mat = mat if ref_emb is None else self.matrix(ref_emb, None)
            an = self.distance.smallest_dist(an, pn_mat[p, n])
        violation = self.distance.margin(ap, an) + self.margin
        losses = F.softplus(violation) if self.smooth_loss else F.relu(violation)
        self.num_active = (losses > 0).sum()
        return self.reduce({"loss": {"losses": losses, "indices": (a, p, n), "reduction_type": "triplet"}},
                           embeddings, labels)
