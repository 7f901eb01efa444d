"""Metric-learning losses with the PML call shape `loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)`."""
from .base import MetricLoss
from .triplet_margin_loss import TripletMarginLoss

# Losses of issue 5 (losses/miners half).
from .contrastive_loss import ContrastiveLoss
from .histogram_loss import HistogramLoss
from .insclr_contrastive_loss import InsCLRContrastiveLoss
from .lifted_structure_loss import GeneralizedLiftedStructureLoss, LiftedStructureLoss
from .multi_similarity_loss import MultiSimilarityLoss
from .n_pair_loss import NPairLoss, NPairsLoss
from .ntxent_loss import InfoNCE, NTXentLoss
from .proxy_anchor_loss import ProxyAnchorLoss
from .proxy_nca_loss import ProxyNCALoss
from .relaxed_contrastive_loss import RelaxedContrastiveLoss, relative_distance
from .self_distillation_kl import SelfDistillationKL
from .self_supervised_loss import SelfSupervisedLoss
from .smooth_ap_loss import SmoothAPLoss
from .spreading_loss import SpreadingLoss
from .stml_loss import STMLLoss

__all__ = ["MetricLoss", "TripletMarginLoss"]
__all__ += [
    "ContrastiveLoss", "GeneralizedLiftedStructureLoss", "HistogramLoss", "InfoNCE", "InsCLRContrastiveLoss", "LiftedStructureLoss",
    "MultiSimilarityLoss", "NPairLoss", "NPairsLoss", "NTXentLoss", "ProxyAnchorLoss", "ProxyNCALoss",
    "RelaxedContrastiveLoss", "SelfDistillationKL", "SelfSupervisedLoss", "SmoothAPLoss", "SpreadingLoss", "STMLLoss",
    "relative_distance",
]

# Issue 12, proxy / classification family.
from .arcface_loss import ArcFaceLoss
from .center_loss import CenterLoss
from .cosface_loss import CosFaceLoss
from .large_margin_softmax_loss import LargeMarginSoftmaxLoss
from .normalized_softmax_loss import NormalizedSoftmaxLoss
from .soft_triple_loss import SoftTripleLoss
from .sphereface_loss import SphereFaceLoss
from .subcenter_arcface_loss import SubCenterArcFaceLoss

__all__ += ["ArcFaceLoss", "CenterLoss", "CosFaceLoss", "LargeMarginSoftmaxLoss", "NormalizedSoftmaxLoss",
            "SoftTripleLoss", "SphereFaceLoss", "SubCenterArcFaceLoss"]

# Issue 12, pair / tuple family.
from .angular_loss import AngularLoss
from .circle_loss import CircleLoss
from .log_ratio_loss import LogRatioLoss
from .margin_loss import MarginLoss
from .supcon_loss import SupConLoss

__all__ += ["AngularLoss", "CircleLoss", "LogRatioLoss", "MarginLoss", "SupConLoss"]


def __getattr__(name: str):
    # PML keeps CrossBatchMemory in `losses`; ours lives a layer up, in `memory` (it wraps a loss with a queue).
    # Resolved lazily so `from ssml_fast.losses import CrossBatchMemory` works as PML's import does without
    # this layer importing the one above it.
    if name == "CrossBatchMemory":
        from ..memory import CrossBatchMemory

        return CrossBatchMemory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
