"""Memory banks: FIFO feature queue (MoCo / cross-batch memory), momentum memory bank, CrossBatchMemory."""
from .bank import MemoryBank
from .cross_batch import CrossBatchMemory
from .queue import FeatureQueue

__all__ = ["CrossBatchMemory", "FeatureQueue", "MemoryBank"]
