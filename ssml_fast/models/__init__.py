"""Embedding networks: trunks by name (small CNNs, torchvision, timm), pooling, heads, local weights."""
from .freezing import FreezableTrunk
from .heads import HEADS, INITS, IdentityHead, LinearHead, MLPHead, NormLinearNorm, make_head
from .image_trunk import IMAGENET_MEAN, IMAGENET_STD, PRETRAINED, ImageTrunk
from .pooling import GLOBAL_POOLS, GeM, GlobalPool
from .registry import TIMM_PREFIX, TRUNKS, available_trunks, build_trunk, is_known_trunk
from .small_cnn import POOLS, ConvTrunk, SmallCNN
from .weights import read_state_dict, skip_pretrained_loading

__all__ = [
    "FreezableTrunk", "HEADS", "INITS", "IdentityHead", "LinearHead", "MLPHead", "NormLinearNorm", "make_head",
    "IMAGENET_MEAN", "IMAGENET_STD", "PRETRAINED", "ImageTrunk", "GLOBAL_POOLS", "GeM", "GlobalPool",
    "TIMM_PREFIX", "TRUNKS", "available_trunks", "build_trunk", "is_known_trunk",
    "POOLS", "ConvTrunk", "SmallCNN", "read_state_dict", "skip_pretrained_loading",
]
