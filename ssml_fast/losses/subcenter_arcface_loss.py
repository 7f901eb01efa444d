"""SubCenterArcFaceLoss (Deng et al. 2020): ArcFace with K sub-centres per class, and its outlier finder."""
from __future__ import annotations

import math

import torch

from .. import _validation as _checks
from . import _pairs
from ._margin_softmax import MarginSoftmaxLoss
from ._proxies import NORM_EPS
from .arcface_loss import ArcFaceLoss


class SubCenterArcFaceLoss(ArcFaceLoss):
    """ArcFace on the best sub-centre of each class: cos theta_ij = max_k cos(x_i, W_{j,k}), then
    l_ij = scale cos theta_ij (j != y_i), l_iy = scale psi(theta_iy) as ArcFaceLoss.

    PML's SubCenterArcFaceLoss(*, num_classes, embedding_size, margin=28.6, scale=64, sub_centers=3,
    **kwargs); num_classes and embedding_size may also be given positionally here (PML reads them from
    the keywords only). `W` is (embedding_size, num_classes * sub_centers), class j's sub-centres in columns
    j*K .. j*K + K - 1 (PML's layout); self.num_classes is the number of classes, as in PML.
    Call: loss(embeddings (B, embedding_size), labels (B,), indices_tuple=None).
    `get_outliers(embeddings, labels, threshold=75, return_dominant_centers=True)`: the paper's cleaning
    step (see there).
    """

    def __init__(self, num_classes: int, embedding_size: int, *, margin: float = 28.6, scale: float = 64,
                 sub_centers: int = 3, distance=None, reducer=None, weight_regularizer=None,
                 weight_reg_weight: float = 1.0, weight_init_func=None, embedding_regularizer=None,
                 embedding_reg_weight: float = 1.0):
        sub_centers = _checks.check_int("sub_centers", sub_centers)
        MarginSoftmaxLoss.__init__(self, num_classes, embedding_size, margin, scale, per_class=sub_centers,
                                   distance=distance, reducer=reducer, weight_regularizer=weight_regularizer,
                                   weight_reg_weight=weight_reg_weight, weight_init_func=weight_init_func,
                                   embedding_regularizer=embedding_regularizer,
                                   embedding_reg_weight=embedding_reg_weight)
        self.sub_centers = sub_centers

    @torch.no_grad()
    def get_outliers(self, embeddings, labels, threshold: float = 75, return_dominant_centers: bool = True):
        """The sub-centre each class's samples mostly pick (its dominant centre) and the samples farther
        than `threshold` degrees from their class's dominant centre (the paper's noisy-sample filter).

        embeddings (B, embedding_size), labels (B,) in [0, num_classes). Returns (outliers, dominant_centers):
        outliers int64 indices into the batch, ordered by label then index (PML's order); dominant_centers
        (embedding_size, num_classes), column j = class j's dominant sub-centre (ties: the lowest index, as
        torch.argmax). A class absent from the batch has no dominant centre: its column is its first
        sub-centre (PML leaves that column uninitialised). return_dominant_centers=False returns only the
        outliers (PML's `return a if c else a, b` returns the pair either way).
        """
        _checks.check_embeddings("embeddings", embeddings)
        labels = _checks.check_labels("labels", labels, embeddings.shape[0], embeddings.device)
        thr = _pairs.check_real("threshold", threshold)
        x = self._logits_input(embeddings)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, num_classes={self.num_classes}), "
                             f"got range [{int(labels.min())}, {int(labels.max())}]")
        K, C = self.sub_centers, self.num_classes
        W = self.weight
        Wn = W / W.norm(dim=0).clamp_min(NORM_EPS)
        xn = x / x.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
        # cosine of each sample to its own class's K sub-centres, (B, K)
        own = torch.einsum("bd,dbk->bk", xn, Wn.view(-1, C, K)[:, labels, :])
        best = own.argmax(dim=1)
        counts = torch.zeros(C, K, dtype=torch.long, device=x.device)
        counts.index_put_((labels, best), torch.ones_like(best), accumulate=True)
        dominant = counts.argmax(dim=1)  # (C,); absent classes: all-zero counts -> sub-centre 0
        dominant_centers = W.view(-1, C, K)[:, torch.arange(C, device=x.device), dominant].clone()
        dist = own.gather(1, dominant[labels][:, None]).squeeze(1)
        idx = torch.where(dist < math.cos(math.radians(thr)))[0]
        outliers = idx[torch.argsort(labels[idx], stable=True)]
        return (outliers, dominant_centers) if return_dominant_centers else outliers
