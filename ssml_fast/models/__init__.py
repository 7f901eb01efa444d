"""Embedding networks: trunks by name, heads, and the small CNNs for the bundled grey-image data."""
from .heads import HEADS, INITS, IdentityHead, LinearHead, MLPHead, make_head
from .registry import TRUNKS, available_trunks, build_trunk
from .small_cnn import POOLS, ConvTrunk, SmallCNN

__all__ = [
    "HEADS", "INITS", "IdentityHead", "LinearHead", "MLPHead", "make_head",
    "TRUNKS", "available_trunks", "build_trunk",
    "POOLS", "ConvTrunk", "SmallCNN",
]
