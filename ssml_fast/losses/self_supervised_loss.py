"""SelfSupervisedLoss: PML's wrapper giving a pair / triplet loss the labels of two views."""
from __future__ import annotations

import torch
from torch import nn

from .. import _validation as _checks


class SelfSupervisedLoss(nn.Module):
    """`SelfSupervisedLoss(loss, symmetric=True)(embeddings (B, D), ref_emb (B, D))`: row i of ref_emb is an
    augmentation of row i of embeddings (labels arange(B) on both sides).

    symmetric=True: loss(cat(embeddings, ref_emb), cat(labels, labels)), every row an anchor;
    symmetric=False: loss(embeddings, labels, ref_emb=ref_emb, ref_labels=labels), the embeddings as anchors.
    Works with any loss of the PML call shape (ours or PML's) that accepts ref_emb; `supported_losses()` is
    PML's list of loss names this wrapper is meant for.
    """

    def __init__(self, loss: nn.Module, symmetric: bool = True):
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be a loss module, got {type(loss).__name__}")
        self.loss = loss
        self.symmetric = bool(symmetric)

    @staticmethod
    def supported_losses():
        return ["AngularLoss", "CircleLoss", "ContrastiveLoss", "GeneralizedLiftedStructureLoss",
                "IntraPairVarianceLoss", "LiftedStructureLoss", "MultiSimilarityLoss", "NTXentLoss",
                "SignalToNoiseRatioContrastiveLoss", "SupConLoss", "TripletMarginLoss", "NCALoss",
                "TupletMarginLoss"]

    @classmethod
    def check_loss_support(cls, loss_name):
        if loss_name not in cls.supported_losses():
            raise ValueError(f"SelfSupervisedLoss not supported for {loss_name}")

    def forward(self, embeddings: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        _checks.check_embeddings("embeddings", embeddings)
        _checks.check_embeddings("ref_emb", ref_emb)
        if ref_emb.shape != embeddings.shape:
            raise ValueError(f"ref_emb must have the shape of embeddings {tuple(embeddings.shape)}, "
                             f"got {tuple(ref_emb.shape)}")
        _checks.check_same_device("ref_emb", ref_emb, embeddings.device)
        labels = torch.arange(embeddings.shape[0], device=embeddings.device)
        if self.symmetric:
            return self.loss(torch.cat([embeddings, ref_emb]), torch.cat([labels, labels]))
        return self.loss(embeddings=embeddings, labels=labels, ref_emb=ref_emb, ref_labels=labels.clone())
