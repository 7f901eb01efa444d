"""Small network utilities shared by methods (below the methods layer)."""
from .ema import ema_update_

__all__ = ["ema_update_"]
