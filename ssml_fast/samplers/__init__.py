"""Batch samplers: P x K class-balanced batches and anchor + neighbour batches (STML, InsCLR)."""
from .candidate_pool import CandidatePoolSampler
from .distributed import DistributedBatchSampler
from .m_per_class import MPerClassSampler
from .nearest_neighbor import NearestNeighborBatchSampler
from .random_batch import RandomBatchSampler

__all__ = ["DistributedBatchSampler", "MPerClassSampler", "NearestNeighborBatchSampler", "CandidatePoolSampler", "RandomBatchSampler"]
