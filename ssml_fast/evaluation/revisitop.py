"""Landmark-retrieval mAP: the revisited Oxford/Paris protocol (Radenovic et al. 2018) and GLDv2 mAP@100.

The per-query average precision follows the official revisitop `compute_ap`: the trapezoid rule over
the precision-recall curve, (P(j-1 hits before rank) + P(j hits at rank)) / 2 per recall step.
The thesis's Figure 19 example (APs 0.62 and 0.44 -> mAP 0.53) uses the non-interpolated "step" AP,
mean of the precision at each hit; `interpolation="step"` gives that one.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import torch

PROTOCOLS = ("easy", "medium", "hard")
_AP_KINDS = ("trapezoid", "step")


def average_precision(positive_ranks, num_positives: int, interpolation: str = "trapezoid") -> float:
    """AP of one query from the 0-based ranks of its retrieved positives.

    Args:
        positive_ranks: sorted 0-based positions of the positives in the ranking (ignored images already
            removed). Positives that were never retrieved are simply absent: they count as misses.
        num_positives: total number of positives (>= len(positive_ranks), >= 1).
        interpolation: "trapezoid" (official revisitop compute_ap) or "step" (mean precision at hits).
    """
    if interpolation not in _AP_KINDS:
        raise ValueError(f"interpolation must be one of {_AP_KINDS}; got {interpolation!r}")
    r = np.asarray(positive_ranks, dtype=np.float64).reshape(-1)
    if isinstance(num_positives, bool) or not isinstance(num_positives, (int, np.integer)):
        raise TypeError(f"num_positives must be an int, got {type(num_positives).__name__}")
    if num_positives < max(1, r.size):
        raise ValueError(f"num_positives={num_positives} must be >= 1 and >= the {r.size} ranks given")
    j = np.arange(r.size, dtype=np.float64)
    after = (j + 1) / (r + 1)
    if interpolation == "step":
        return float(after.sum() / num_positives)
    before = np.where(r == 0, 1.0, j / np.maximum(r, 1))
    return float(((before + after) / 2).sum() / num_positives)


def _as_ranks(ranks, n_queries: int) -> np.ndarray:
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be 2-D (n_queries, n_ranked), got shape {ranks.shape}")
    if ranks.dtype == bool or not np.issubdtype(ranks.dtype, np.integer):
        raise TypeError(f"ranks must hold integer database indices, got {ranks.dtype}")
    if ranks.shape[0] != n_queries:
        hint = " (the official code's layout is (n_db, n_queries): pass ranks.T)" if ranks.shape[1] == n_queries else ""
        raise ValueError(f"ranks has {ranks.shape[0]} rows but there are {n_queries} queries{hint}")
    if ranks.size and ranks.min() < 0:
        raise ValueError("ranks contains negative indices")
    srt = np.sort(ranks, axis=1)
    if (srt[:, 1:] == srt[:, :-1]).any():
        raise ValueError("ranks has a repeated database index within a row; each row must be a ranking")
    return ranks


def _ids(entry: Mapping, key: str, q: int) -> np.ndarray:
    v = entry.get(key, ())
    a = np.asarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v).reshape(-1)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"gnd[{q}][{key!r}] must hold integer database indices, got {a.dtype}")
    return a.astype(np.int64)


def _split(entry: Mapping, protocol: str, q: int) -> Tuple[np.ndarray, np.ndarray]:
    easy, hard, junk = (_ids(entry, key, q) for key in ("easy", "hard", "junk"))
    if protocol == "easy":
        return easy, np.concatenate([junk, hard])
    if protocol == "medium":
        return np.concatenate([easy, hard]), junk
    return hard, np.concatenate([junk, easy])


def _query_scores(row: np.ndarray, ok: np.ndarray, junk: np.ndarray, interpolation: str, kappas):
    pos = np.flatnonzero(np.isin(row, ok))
    junk_pos = np.flatnonzero(np.isin(row, junk))
    # Ignored images are removed from the ranking: shift each positive up by the ignored ones before it.
    pos = pos - np.searchsorted(junk_pos, pos, side="left")
    ap = average_precision(pos, int(np.unique(ok).size), interpolation)
    mp = []
    for kappa in kappas:
        if pos.size == 0:
            mp.append(0.0)
            continue
        kq = min(int(pos.max()) + 1, kappa)  # official: precision at min(last positive, kappa)
        mp.append(float((pos + 1 <= kq).sum() / kq))
    return ap, mp


def _check_kappas(kappas) -> tuple:
    """A sequence of ints >= 1 (Python or numpy integers); a float such as 2.7 is rejected, not truncated."""
    if isinstance(kappas, (str, bytes)) or not isinstance(kappas, (Sequence, np.ndarray)):
        raise TypeError(f"kappas must be a sequence of ints, got {type(kappas).__name__}")
    for k in kappas:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"kappas must hold ints, got {k!r} ({type(k).__name__})")
        if k < 1:
            raise ValueError(f"kappas must be >= 1, got {k}")
    return tuple(int(k) for k in kappas)


def revisitop_map(
    ranks,
    gnd: Sequence[Mapping],
    protocols: Sequence[str] = PROTOCOLS,
    *,
    kappas: Sequence[int] = (),
    interpolation: str = "trapezoid",
    return_per_query: bool = False,
):
    """Revisited Oxford/Paris mAP under the Easy / Medium / Hard protocols.

    Args:
        ranks: (n_queries, n_ranked) integer tensor or array; row q lists database indices best first.
            This is the transpose of the official code's (n_db, n_queries) `ranks`. Rows may be truncated
            rankings: positives missing from a row count as not retrieved.
        gnd: one mapping per query with integer index lists "easy", "hard", "junk" (a missing key is
            empty), as in the official gnd_r*.pkl files.
        protocols: any of "easy" (easy positives; junk and hard ignored), "medium" (easy + hard
            positives; junk ignored), "hard" (hard positives; junk and easy ignored). Ignored images are
            removed from the ranking, not counted as misses.
        kappas: also report mean precision at these k (official mP@k) as "<protocol>_mP@<k>".
        interpolation: "trapezoid" (official) or "step" AP (see `average_precision`).
        return_per_query: also return {protocol: (n_queries,) float64 APs, NaN where left out}.

    Returns:
        {protocol: mAP in [0, 1]} (plus mP@k entries); queries without positives under a protocol are
        left out of its mean; NaN if no query has one.
    """
    if isinstance(gnd, Mapping) or not isinstance(gnd, Sequence):
        raise TypeError(f"gnd must be a sequence of per-query mappings, got {type(gnd).__name__}")
    if isinstance(protocols, str):
        protocols = (protocols,)
    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"protocols must be drawn from {PROTOCOLS}; got {p!r}")
    if interpolation not in _AP_KINDS:
        raise ValueError(f"interpolation must be one of {_AP_KINDS}; got {interpolation!r}")
    kappas = _check_kappas(kappas)
    ranks = _as_ranks(ranks, len(gnd))
    out: Dict[str, float] = {}
    per_query: Dict[str, np.ndarray] = {}
    for protocol in protocols:
        aps = np.full(len(gnd), np.nan)
        mps = np.full((len(gnd), len(kappas)), np.nan)
        for q, entry in enumerate(gnd):
            if not isinstance(entry, Mapping):
                raise TypeError(f"gnd[{q}] must be a mapping with 'easy'/'hard'/'junk', got {type(entry).__name__}")
            ok, junk = _split(entry, protocol, q)
            if ok.size == 0:
                continue
            aps[q], mps[q] = _query_scores(ranks[q], ok, junk, interpolation, kappas)
        kept = ~np.isnan(aps)
        out[protocol] = float(aps[kept].mean()) if kept.any() else float("nan")
        for j, kappa in enumerate(kappas):
            out[f"{protocol}_mP@{kappa}"] = float(mps[kept, j].mean()) if kept.any() else float("nan")
        per_query[protocol] = aps
    return (out, per_query) if return_per_query else out


def landmark_map_at_k(ranks, positives: Sequence, k: int = 100) -> float:
    """GLDv2 retrieval mAP@k (Weyand et al. 2020).

    mAP@k = mean over queries with m_q > 0 of (1 / min(m_q, k)) * sum_{i <= k} P_q(i) * rel_q(i),
    m_q = number of relevant database images of query q.

    Args:
        ranks: (n_queries, n_ranked) integer tensor or array of database indices, best first; only the
            first k columns are used.
        positives: per query, a collection of relevant database indices (empty: query left out, as the
            challenge ignores non-landmark queries).
        k: cut-off (100 in GLDv2).
    Returns:
        mAP@k in [0, 1]; NaN if no query has a positive.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if isinstance(positives, Mapping) or not isinstance(positives, Sequence):
        raise TypeError(f"positives must be a sequence of per-query index collections, got {type(positives).__name__}")
    ranks = _as_ranks(ranks, len(positives))[:, :k]
    aps = []
    for q, pos_ids in enumerate(positives):
        rel_ids = _ids({"p": pos_ids}, "p", q)
        m = int(np.unique(rel_ids).size)
        if m == 0:
            continue
        rel = np.isin(ranks[q], rel_ids)
        precision = np.cumsum(rel) / np.arange(1, rel.size + 1)
        aps.append(float((precision * rel).sum() / min(m, k)))
    return float(np.mean(aps)) if aps else float("nan")
