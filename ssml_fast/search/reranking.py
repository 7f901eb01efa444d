"""k-reciprocal re-ranking of a query's shortlist, with ssml_fast.ops.kreciprocal_rerank.

For each query separately, the joint set is the query and its `candidates` best matches from the index
(their vectors read back from the index's float16 vector file, computed in float32); the op's re-ranked
distance (Zhong et al. 2017: Jaccard distance of k-reciprocal neighbourhoods blended with the original
distance by lambda_value) orders the shortlist, and the first k are returned. Only the shortlist is
re-ranked, as in retrieval practice: the neighbourhoods are those within the joint set of candidates + 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class RerankParams:
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    candidates: int = 100   # shortlist length re-ranked per query

    def __post_init__(self):
        for name in ("k1", "k2", "candidates"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"rerank {name} must be a positive integer, got {v!r}")
        if self.k2 > self.k1:
            raise ValueError(f"rerank k2 must be <= k1, got k2={self.k2} > k1={self.k1}")
        if isinstance(self.lambda_value, bool) or not isinstance(self.lambda_value, (int, float)) \
                or not 0 <= self.lambda_value <= 1:
            raise ValueError(f"rerank lambda_value must be a number in [0, 1], got {self.lambda_value!r}")

    @classmethod
    def of(cls, rerank) -> "RerankParams | None":
        """None / False -> None; True -> defaults; a dict of fields or a RerankParams -> itself."""
        if rerank is None or rerank is False:
            return None
        if rerank is True:
            return cls()
        if isinstance(rerank, cls):
            return rerank
        if isinstance(rerank, dict):
            unknown = set(rerank) - {"k1", "k2", "lambda_value", "candidates"}
            if unknown:
                raise ValueError(f"rerank: unknown options {sorted(unknown)} (k1, k2, lambda_value, candidates)")
            return cls(**rerank)
        raise TypeError(f"rerank must be a bool, a dict or RerankParams, got {type(rerank).__name__}")


def rerank_shortlist(query: np.ndarray, candidate_vectors: np.ndarray, params: RerankParams) -> np.ndarray:
    """Re-ranked distances (R,) float32 of one query (D,) to its R candidates (R, D)."""
    from ..ops import kreciprocal_rerank

    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))[None]
    g = torch.from_numpy(np.ascontiguousarray(candidate_vectors, dtype=np.float32))
    return kreciprocal_rerank(q, g, params.k1, params.k2, params.lambda_value)[0].numpy()
