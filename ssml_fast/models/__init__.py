"""Embedding networks."""
from .small_cnn import SmallCNN

__all__ = ["SmallCNN"]
