"""Inner-product top-k of queries against a stored key matrix (bank or queue): GEMM + top-k in chunks."""
from __future__ import annotations

import torch

# Scores are computed for this many (query, key) pairs at a time, so a 1,000,000-slot bank never
# needs a Q x N score matrix.
_CHUNK_ELEMENTS = 1 << 24


def inner_product_topk(
    query: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
    key_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k keys with the largest <query, key> per query row.

    query (Q, D), keys (N, D) of one dtype and device. exclude (Q,) int64: per query, keys whose id equals
    exclude[q] get score -inf (a negative value excludes nothing). key_ids (N,) int64: the id of each key;
    None means the key's row index. Returns (scores (Q, k) descending, rows (Q, k) int64 row indices
    into keys). Order among exactly equal scores is unspecified; excluded keys only appear (with score
    -inf) when k exceeds the number of keys left.
    """
    q, n = query.shape[0], keys.shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // max(q, 1))
    best_s = query.new_empty((q, 0))
    best_i = torch.empty((q, 0), dtype=torch.long, device=query.device)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        s = query @ keys[c0:c1].T
        if exclude is not None:
            ids = key_ids[c0:c1] if key_ids is not None else torch.arange(c0, c1, device=query.device)
            s.masked_fill_(ids.unsqueeze(0) == exclude.unsqueeze(1), float("-inf"))
        s, i = s.topk(min(k, c1 - c0), dim=1)
        best_s, pos = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + c0], 1).gather(1, pos)
    return best_s, best_i
