"""Memory banks: FIFO feature queue (MoCo / cross-batch memory), momentum memory bank, CrossBatchMemory,
and ContextualCache (STML with a memory: the memory's teacher Gram kept across steps)."""
from .bank import MemoryBank
from .contextual_cache import ContextualCache
from .cross_batch import CrossBatchMemory
from .queue import FeatureQueue

__all__ = ["ContextualCache", "CrossBatchMemory", "FeatureQueue", "MemoryBank"]
