"""Datasets in the layouts ssml_fast reads; `digits` needs no download."""
from .digits import DigitsSplit, load_digits_split

__all__ = ["DigitsSplit", "load_digits_split"]
