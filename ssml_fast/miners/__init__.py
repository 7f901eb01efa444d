"""Miners returning PML-shaped index tuples for the losses' `indices_tuple`."""
from .base import BaseMiner
from .batch_hard_miner import BatchHardMiner
from .distance_weighted_miner import DistanceWeightedMiner
from .multi_similarity_miner import MultiSimilarityMiner
from .semi_hard_miner import SemiHardMiner
from .triplet_margin_miner import TripletMarginMiner

__all__ = ["BaseMiner", "BatchHardMiner", "DistanceWeightedMiner", "MultiSimilarityMiner", "SemiHardMiner",
           "TripletMarginMiner"]
