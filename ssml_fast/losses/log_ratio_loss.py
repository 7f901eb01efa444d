"""LogRatioLoss (Kim et al. 2019, "Deep Metric Learning Beyond Binary Supervision"): continuous labels."""
from __future__ import annotations

import torch

from .. import distances as _distances
from .. import _validation as _checks
from . import _pairs
from .base import MetricLoss

LABEL_DISTANCES = ("euclidean", "sqeuclidean")


class LogRatioLoss(MetricLoss):
    """Distance ratios in the embedding space match distance ratios in the label space:
        l(a, i, j) = ( log(d(f_a, f_i) / d(f_a, f_j)) - log(D(y_a, y_i) / D(y_a, y_j)) )^2
    with log(. + eps) on both distances (the official code's eps = 1e-6). Dense triplet sampling as the
    paper: every sample of the batch is an anchor and every unordered pair {i, j} of its other samples forms
    a triplet (no binary positive / negative split); l_a is the mean over those pairs, the loss the mean
    over anchors (every anchor has the same number of pairs, so this is also the mean over all triplets).

    LogRatioLoss(label_distance="euclidean", eps=1e-6, *, distance=LpDistance(normalize_embeddings=False),
                 reducer=MeanReducer(), embedding_regularizer=None, embedding_reg_weight=1)
      label_distance: D on the labels: "euclidean" (||y_a - y_i||, |y_a - y_i| for scalars, as the official
        code), "sqeuclidean", or a callable (labels (B, K), ref_labels (R, K)) -> (B, R) of D >= 0;
      distance: d in the embedding space, any distance object (not a similarity), e.g. MahalanobisMetric.
    Call: loss(embeddings (B, D), labels, indices_tuple=None, ref_emb=None (R, D), ref_labels=None)
      labels: continuous labels, (B,) or (B, K) real (integers are taken as numbers), required;
      ref_emb / ref_labels: the other samples of every anchor's triplets come from this reference set
        (then all R of them; for the batch itself the B - 1 others);
      indices_tuple: triplets (a, i, j) to use instead of the dense set (their mean; "triplet" losses);
        pairs (a1, p, a2, n) (e.g. from CrossBatchMemory or a pair miner) give the triplets (a1, p, n), a1 == a2.
    Per-anchor element losses go to the reducer (anchors with fewer than two others are left out).
    O(B * R): with u_ai = log(d_ai + eps) - log(D_ai + eps), the mean over pairs of (u_ai - u_aj)^2 is
    2 / (m - 1) * sum_i (u_ai - mean_a u)^2 for the m others of a (no B x R x R tensor).
    """

    requires_labels = False  # handled here: continuous labels are not class labels

    def __init__(self, label_distance="euclidean", eps: float = 1e-6, *, distance=None, reducer=None,
                 embedding_regularizer=None, embedding_reg_weight: float = 1.0):
        super().__init__(distance, reducer, embedding_regularizer, embedding_reg_weight)
        if self.distance.is_inverted:
            raise ValueError("LogRatioLoss needs a distance (is_inverted=False), not a similarity: "
                             f"got {type(self.distance).__name__}")
        if not callable(label_distance):
            _checks.check_choice("label_distance", label_distance, LABEL_DISTANCES)
        self.label_distance = label_distance
        self.eps = _pairs.check_positive("eps", eps)

    def default_distance(self):
        return _distances.LpDistance(normalize_embeddings=False)

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        _checks.check_embeddings("embeddings", embeddings)
        B = embeddings.shape[0]
        y = _continuous_labels("labels", labels, B, embeddings.device)
        if ref_emb is None or ref_emb is embeddings:
            if ref_labels is not None and ref_labels is not labels:
                raise ValueError("ref_labels was given without ref_emb (or ref_emb is the embeddings themselves)")
            ry = None
            ref_emb = None
        else:
            _checks.check_embeddings("ref_emb", ref_emb)
            _checks.check_same_dim("ref_emb", embeddings, ref_emb)
            _checks.check_same_device("ref_emb", ref_emb, embeddings.device)
            ry = _continuous_labels("ref_labels", ref_labels, ref_emb.shape[0], embeddings.device)
            if ry.shape[1] != y.shape[1]:
                raise ValueError(f"ref_labels have {ry.shape[1]} components but labels have {y.shape[1]}")
        # the base validates indices_tuple and handles empty sets, autocast and the regulariser;
        # labels reach compute_loss through self._y
        self._y, self._ry = y, ry
        try:
            return super().forward(embeddings, None, indices_tuple, ref_emb, None)
        finally:
            self._y = self._ry = None

    def label_matrix(self, y, ry):
        """D(y_a, y_i): (B, K), (R, K) or None -> (B, R), in y's dtype."""
        if callable(self.label_distance):
            out = self.label_distance(y, y if ry is None else ry)
            _checks.check_tensor("label_distance(...)", out)
            R = y.shape[0] if ry is None else ry.shape[0]
            if out.shape != (y.shape[0], R):
                raise ValueError(f"label_distance must return a ({y.shape[0]}, {R}) matrix, got {tuple(out.shape)}")
            return out.to(y.dtype)
        diff = y[:, None, :] - (y if ry is None else ry)[None, :, :] if y.shape[1] > 1 else None
        if diff is None:  # scalars: |y_a - y_i| without a B x R x 1 detour
            ref = (y if ry is None else ry)[:, 0]
            d2 = (y[:, 0, None] - ref[None, :]).square()
        else:
            d2 = diff.square().sum(dim=2)
        return d2 if self.label_distance == "sqeuclidean" else d2.sqrt()

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        B = embeddings.shape[0]
        R = B if ref_emb is None else ref_emb.shape[0]
        dist = self.matrix(embeddings, ref_emb)
        y = self._y.to(dist.dtype)
        ry = None if self._ry is None else self._ry.to(dist.dtype)
        u = torch.log(dist + self.eps) - torch.log(self.label_matrix(y, ry) + self.eps)
        if indices_tuple is not None:
            # pairs (a1, p, a2, n) become the triplets (a1, p, n) with a1 == a2, as PML converts them
            a, i, j = _pairs.as_triplets(indices_tuple, B, R, embeddings.device)
            if a.numel() == 0:
                return self.reduce({"loss": {"losses": 0, "indices": None, "reduction_type": "already_reduced"}},
                                   embeddings, None)
            losses = (u[a, i] - u[a, j]).square()
            return self.reduce({"loss": {"losses": losses, "indices": (a, i, j), "reduction_type": "triplet"}},
                               embeddings, None)
        m = R - 1 if ref_emb is None else R  # the others of every anchor
        if m < 2:
            return self.reduce({"loss": {"losses": 0, "indices": None, "reduction_type": "already_reduced"}},
                               embeddings, None)
        if ref_emb is None:
            keep = ~torch.eye(B, dtype=torch.bool, device=u.device)
            u = torch.where(keep, u, 0.0)
            mean = u.sum(dim=1, keepdim=True) / m
            ss = torch.where(keep, u - mean, 0.0).square().sum(dim=1)
        else:
            ss = (u - u.mean(dim=1, keepdim=True)).square().sum(dim=1)
        losses = ss * (2.0 / (m - 1))
        return self.reduce({"loss": {"losses": losses, "indices": torch.arange(B, device=u.device),
                                     "reduction_type": "element"}}, embeddings, None)


def _continuous_labels(name, labels, n, device):
    """(n,) or (n, K) real labels -> (n, K) float (float32 for half / integer labels, float64 stays)."""
    if labels is None:
        raise ValueError(f"LogRatioLoss needs {name}: continuous labels (n,) or (n, K)")
    _checks.check_tensor(name, labels)
    if labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be real numbers, got {labels.dtype}")
    if labels.dim() not in (1, 2) or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, K), got {tuple(labels.shape)}")
    _checks.check_same_device(name, labels, device)
    y = labels if labels.dtype == torch.float64 else labels.float()
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name} must be finite")
    return y[:, None] if y.dim() == 1 else y
