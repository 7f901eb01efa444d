"""InsCLR's positive mining from candidate pools and a memory of features (thesis Algorithm 1; the official
`xbmv2.py`, METHODS.md 2.5 v2), vectorised over the groups of a batch, and the memory columns it yields.

A *group* is an anchor and its batch neighbours (`members`, anchor first); `accepted` marks the members
that passed the in-batch selection. For each group, with pb(m) / nb(m) the numbers of *leading* entries of
member m's pool whose static pool similarity is >= positive_threshold / negative_threshold:

    P0 = U_{accepted m} pool(m)[:pb(m)]            minus the members          (initial positives)
    C  = U_{accepted m} pool(m)[pb(m):nb(m)]       minus the members and P0   (candidates)
    N0 = U_{every m}    pool(m)[nb(m):]            minus the members, P0, C   (pool negatives)
    Q  = features of the accepted members and of P0                          (the query set)
    `rounds` times: score every unselected candidate c against Q, select the top `k` eligible ones by
    score (ties: lower slot id first) and append them to Q (iterative query expansion).
    positives = P0 then the selections, in round order.

Scores ("thresholded_mean", official): S_c = {q in Q : c.q >= expansion_threshold}, score = mean of c.q over
S_c, eligible when S_c is non-empty (so score >= threshold). "mean" (thesis Algorithm 1): the mean of c.q
over all of Q, eligible when >= expansion_threshold.

`exclude_rejected` (default True) also keeps the rejected members out of P0 / C: the official code
subtracts only the accepted members, so a neighbour the current model just rejected can come back as a
pool positive through another member's pool. With False the rejected members are ordinary pool entries.

Vectorisation: only the leading nb(m) entries of the accepted members' pools (plus the members) can be
members / P0 / C; those few are deduplicated per group with two small sorts (by slot then by role) into
contiguous segments. The many pool-negative entries (most of the (G, M * P)) are never sorted on the mining
path: each is tested against its group's sorted members / P0 / C by a batched binary search and kept as
`negative_entries` (duplicates allowed), which is all the memory loss needs; the deduplicated, ascending
`negatives` are computed only when read. Each expansion round is one batched similarity of the candidates
against the k new queries (running thresholded sums), so nothing loops over groups in Python. (Sorting all
(G, M * P) entries, as this module first did, was two thirds of the step: 64 x 2,004 int64 keys per sort.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import torch

SCORES = ("thresholded_mean", "mean")

# Roles of a pool entry, in priority order (a slot seen in several roles within a group keeps the first).
_MEMBER, _POSITIVE, _CANDIDATE, _NEGATIVE, _NONE = range(5)
# Elements of the largest (groups x candidates x queries) similarity block computed at once.
_BLOCK = 1 << 24


@dataclass
class MinedPositives:
    """Per-group results, (G, width) int64 slot ids padded with -1 (order within a row as documented)."""

    initial: torch.Tensor          # P0, ascending slot id
    rounds: list                   # per round, (G, k): the selections, best score first
    positives: torch.Tensor        # P0 then the selections in round order
    candidates: torch.Tensor       # C (selected or not), ascending slot id
    negative_entries: torch.Tensor  # N0 as pool entries: any order, duplicates possible, -1 = not N0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def negatives(self) -> torch.Tensor:
        """N0, ascending slot id, each slot once (computed on first access)."""
        if "negatives" not in self._cache:
            self._cache["negatives"] = _unique_rows(self.negative_entries)
        return self._cache["negatives"]


def _unique_rows(entries: torch.Tensor) -> torch.Tensor:
    """Each row's distinct non-negative values, ascending, padded with -1."""
    G = entries.shape[0]
    if G == 0 or entries.shape[1] == 0:
        return entries.new_full((G, 0), -1)
    s = torch.sort(entries, dim=1).values
    keep = s >= 0
    keep[:, 1:] &= s[:, 1:] != s[:, :-1]
    big = torch.iinfo(s.dtype).max
    s = torch.sort(torch.where(keep, s, big), dim=1).values
    width = int(keep.sum(1).max())
    s = s[:, :width]
    return s.masked_fill(s == big, -1)


def _check_threshold(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [-1, 1], got {value!r}")
    return float(value)


def _leading(mask: torch.Tensor) -> torch.Tensor:
    """Number of leading True entries along the last dim (index of the first False; all-True rows: the length)."""
    miss = ~mask
    first_miss = miss.to(torch.uint8).argmax(-1)  # argmax returns the first maximal index
    return torch.where(miss.any(-1), first_miss, mask.shape[-1])


def _segment(sorted_idx: torch.Tensor, start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Rows of `sorted_idx[g, start[g]:start[g] + length[g]]`, padded with -1 to the longest."""
    width = int(length.max()) if length.numel() else 0
    pos = start[:, None] + torch.arange(width, device=sorted_idx.device)
    valid = torch.arange(width, device=sorted_idx.device) < length[:, None]
    if sorted_idx.shape[1] == 0:
        return torch.full((sorted_idx.shape[0], width), -1, dtype=torch.long, device=sorted_idx.device)
    out = sorted_idx.gather(1, pos.clamp(max=sorted_idx.shape[1] - 1))
    return out.masked_fill(~valid, -1)


def _gather_rows(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return features[idx.clamp(min=0)]


def _threshold_sums(fc, fq, q_valid, threshold: float, thresholded: bool):
    """Per candidate: sum and count of c.q over the valid queries (with c.q >= threshold if thresholded)."""
    G, C = fc.shape[:2]
    Q = fq.shape[1]
    total = torch.zeros(G, C, dtype=fc.dtype, device=fc.device)
    count = torch.zeros(G, C, dtype=fc.dtype, device=fc.device)
    if C == 0 or Q == 0:
        return total, count
    step = max(1, _BLOCK // max(1, C * Q))
    for g0 in range(0, G, step):
        s = torch.bmm(fc[g0:g0 + step], fq[g0:g0 + step].transpose(1, 2))
        w = q_valid[g0:g0 + step, None, :].expand_as(s)
        if thresholded:
            w = w & (s >= threshold)
        total[g0:g0 + step] = (s * w).sum(-1)
        count[g0:g0 + step] = w.sum(-1).to(fc.dtype)
    return total, count


@torch.no_grad()
def mine_positives(
    pool_idx: torch.Tensor,
    pool_sim: torch.Tensor,
    members: torch.Tensor,
    accepted: torch.Tensor,
    features: torch.Tensor,
    *,
    positive_threshold: float = 0.75,
    negative_threshold: float = 0.5,
    expansion_threshold: float = 0.6,
    rounds: int = 4,
    k: int = 5,
    score: str = "thresholded_mean",
    exclude_rejected: bool = True,
) -> MinedPositives:
    """Initial positives, query-expansion rounds, candidates and pool negatives of every group.

    Args:
        pool_idx: (N, P) int64 candidate pools (slot ids, most similar first, the sample itself absent).
        pool_sim: (N, P) the static pool similarities, descending per row.
        members: (G, M) int64 slot ids of each group's batch items, anchor first.
        accepted: (G, M) bool, members kept by the in-batch selection (the anchor always is).
        features: (N, D) the no-augmentation memory features (unit norm) used for the expansion scores.
        positive_threshold >= negative_threshold, expansion_threshold: in [-1, 1].
        rounds: query-expansion rounds (>= 0); k: selections per round (>= 1).
        score: "thresholded_mean" (official) or "mean" (thesis Algorithm 1).
    """
    pt = _check_threshold("positive_threshold", positive_threshold)
    nt = _check_threshold("negative_threshold", negative_threshold)
    et = _check_threshold("expansion_threshold", expansion_threshold)
    if nt > pt:
        raise ValueError(f"negative_threshold={nt} must be <= positive_threshold={pt}")
    for name, v, low in (("rounds", rounds, 0), ("k", k, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if pool_idx.dim() != 2 or pool_sim.shape != pool_idx.shape:
        raise ValueError(f"pool_idx and pool_sim must be (N, P) of one shape, got {tuple(pool_idx.shape)} "
                         f"and {tuple(pool_sim.shape)}")
    if members.dim() != 2 or accepted.shape != members.shape or accepted.dtype != torch.bool:
        raise ValueError(f"members (G, M) int and accepted (G, M) bool must match, got {tuple(members.shape)} "
                         f"and {tuple(accepted.shape)} {accepted.dtype}")
    if features.dim() != 2 or features.shape[0] != pool_idx.shape[0]:
        raise ValueError(f"features must be (N, D) with N = {pool_idx.shape[0]} pool rows, got {tuple(features.shape)}")

    dev = pool_idx.device
    N, P = pool_idx.shape
    G, M = members.shape
    members = members.to(dev).long()
    accepted = accepted.to(dev)
    pm, ps = pool_idx[members], pool_sim[members]                    # (G, M, P)
    pb = _leading(ps >= pt)                                          # (G, M)
    nb = _leading(ps >= nt)
    own = accepted | exclude_rejected
    member_role = torch.where(own, _MEMBER, _NONE)
    # Members, P0 and C come only from the first nb(m) entries of accepted members' pools.
    nb_acc = torch.where(accepted, nb, 0)
    W = int(nb_acc.max()) if nb_acc.numel() else 0
    j = torch.arange(W, device=dev)
    role = torch.where(j < pb[..., None], _POSITIVE, _CANDIDATE)
    role = torch.where(j < nb_acc[..., None], role, _NONE)
    idx = torch.cat([pm[..., :W].reshape(G, M * W), members], 1)
    role = torch.cat([role.reshape(G, M * W), member_role], 1)

    # Dedup per group: sort by (slot, role); the first of a run of one slot carries its best role.
    key, _ = torch.sort(idx * 5 + role, dim=1)
    sidx, srole = key // 5, key % 5
    first = torch.ones_like(srole, dtype=torch.bool)
    first[:, 1:] = sidx[:, 1:] != sidx[:, :-1]
    srole = torch.where(first, srole, _NONE)
    # Roles as contiguous segments, ascending slot id within each.
    key2, _ = torch.sort(srole * N + sidx, dim=1)
    oidx = key2 % N
    counts = torch.stack([(srole == r).sum(1) for r in range(_NONE)], 1)   # (G, 4)
    starts = torch.cumsum(counts, 1) - counts
    initial = _segment(oidx, starts[:, _POSITIVE], counts[:, _POSITIVE])
    cand = _segment(oidx, starts[:, _CANDIDATE], counts[:, _CANDIDATE])

    # N0: every member's entries past nb(m), minus the group's members / P0 / C. Membership by a bitmap of
    # groups per slot (one bit per group, 64 groups per int64 word; each (group, slot) is set once, so the
    # index_add is an OR): a gather per entry instead of a binary search (half the time).
    n_taken = counts[:, _MEMBER] + counts[:, _POSITIVE] + counts[:, _CANDIDATE]
    width = int(n_taken.max()) if n_taken.numel() else 0
    taken = oidx[:, :width]
    words = (G + 63) // 64
    g_word = (torch.arange(G, device=dev) // 64)[:, None]
    g_bit = (torch.arange(G, device=dev) % 64)[:, None]
    bitmap = torch.zeros(N * words, dtype=torch.long, device=dev)
    valid = torch.arange(width, device=dev) < n_taken[:, None]
    bitmap.index_add_(0, (taken * words + g_word)[valid], (torch.ones_like(taken) << g_bit)[valid])
    entries = pm.reshape(G, M * P)
    hit = ((bitmap[entries * words + g_word] >> g_bit) & 1).bool()
    past = torch.arange(P, device=dev) >= nb[..., None]                  # (G, M, P)
    negative_entries = torch.where(past.reshape(G, M * P) & ~hit, entries, -1)

    feats = features.to(dev)
    dtype = feats.dtype if feats.is_floating_point() else torch.float32
    feats = feats.to(dtype)
    q_idx = torch.cat([torch.where(accepted, members, -1), initial], 1)
    q_valid = q_idx >= 0
    c_valid = cand >= 0
    fc = _gather_rows(feats, cand)
    thresholded = score == "thresholded_mean"
    total, count = _threshold_sums(fc, _gather_rows(feats, q_idx), q_valid, et, thresholded)
    selected = torch.zeros_like(c_valid)
    picks = []
    width = cand.shape[1]
    for _ in range(rounds):
        kk = min(k, width)
        if kk == 0:
            picks.append(torch.full((G, k), -1, dtype=torch.long, device=dev))
            continue
        mean = total / count.clamp(min=1)
        ok = c_valid & ~selected & ((count > 0) if thresholded else (count > 0) & (mean >= et))
        s = torch.where(ok, mean, torch.full_like(mean, float("-inf")))
        order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :kk]
        good = torch.isfinite(s.gather(1, order))
        selected.scatter_(1, order, good | selected.gather(1, order))
        new = torch.where(good, cand.gather(1, order), -1)
        t, c = _threshold_sums(fc, _gather_rows(feats, new), good, et, thresholded)
        total, count = total + t, count + c
        picks.append(torch.cat([new, new.new_full((G, k - kk), -1)], 1))
    positives = torch.cat([initial] + picks, 1)
    return MinedPositives(initial=initial, rounds=picks, positives=positives, candidates=cand,
                          negative_entries=negative_entries)


def random_slots(eligible: torch.Tensor, count: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """`count` distinct slots drawn uniformly from the True entries of `eligible` (all of them when there are
    fewer), ascending; the draw uses the CPU `generator`, so it replays on any device."""
    n = int(eligible.sum())
    if count <= 0 or n == 0:
        return torch.zeros(0, dtype=torch.long, device=eligible.device)
    if count >= n:
        return eligible.nonzero().squeeze(1)
    r = torch.rand(eligible.shape[0], generator=generator).to(eligible.device)
    r = r.masked_fill(~eligible, 2.0)
    return torch.sort(r.topk(count, largest=False).indices).values


@dataclass
class MemoryColumns:
    """The memory side of a step: positive slots with the groups that mined them, and negative slots."""

    positive_slots: torch.Tensor   # (Cp,) int64, ascending
    membership: torch.Tensor       # (G, Cp) bool: slot c is a positive of group g
    negative_slots: torch.Tensor   # (Cn,) int64, ascending


@torch.no_grad()
def memory_columns(
    mined: MinedPositives,
    num_slots: int,
    *,
    num_negatives: int,
    filled: Optional[torch.Tensor] = None,
    batch_index: Optional[torch.Tensor] = None,
    exclude_candidates: bool = False,
    one_label_per_slot: bool = False,
    generator: Optional[torch.Generator] = None,
) -> MemoryColumns:
    """Positives and negatives of every group merged into the columns of one memory loss.

    Negatives: the pool negatives of all groups minus every positive, then random other filled slots until
    there are `num_negatives` (0 = pool negatives only). `batch_index` slots (the batch's own images) are
    removed from both sides when given; `exclude_candidates` keeps unselected candidates out of the random
    draw. `one_label_per_slot` (official): a slot mined by several groups is a positive of the first only
    (the official code keeps one label arbitrarily), so the others see it as a negative.
    """
    dev = mined.positives.device
    G = mined.positives.shape[0]
    filled = torch.ones(num_slots, dtype=torch.bool, device=dev) if filled is None else filled.to(dev)
    banned = torch.zeros(num_slots, dtype=torch.bool, device=dev)
    if batch_index is not None:
        banned[batch_index.to(dev)] = True
    groups = torch.arange(G, device=dev)[:, None].expand_as(mined.positives)
    valid = mined.positives >= 0
    slots, owners = mined.positives[valid], groups[valid]
    keep = ~banned[slots]
    slots, owners = slots[keep], owners[keep]
    member = torch.zeros(G, num_slots, dtype=torch.bool, device=dev)
    if one_label_per_slot:
        first = torch.full((num_slots,), G, dtype=torch.long, device=dev)
        first.scatter_reduce_(0, slots, owners, reduce="amin")
        hit = first < G
        member[first[hit], hit.nonzero().squeeze(1)] = True
    else:
        member[owners, slots] = True
    is_pos = member.any(0)
    pos_slots = is_pos.nonzero().squeeze(1)
    neg = torch.zeros(num_slots, dtype=torch.bool, device=dev)
    n0 = mined.negative_entries[mined.negative_entries >= 0]
    neg[n0] = True
    neg &= ~is_pos & ~banned & filled
    need = num_negatives - int(neg.sum())
    if num_negatives > 0 and need > 0:
        eligible = filled & ~neg & ~is_pos & ~banned
        if exclude_candidates:
            c = mined.candidates[mined.candidates >= 0]
            eligible[c] = False
        neg[random_slots(eligible, need, generator)] = True
    return MemoryColumns(pos_slots, member[:, pos_slots], neg.nonzero().squeeze(1))


@torch.no_grad()
def excluded_random_negatives(
    num_slots: int,
    count: int,
    *,
    filled: torch.Tensor,
    exclude: torch.Tensor,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """InsCLR v1 memory negatives: `count` random filled slots not in `exclude` (any shape of slot ids, e.g.
    the top-50 pool neighbours of every batch item, and the batch items)."""
    eligible = filled.clone()
    ex = exclude.reshape(-1).to(eligible.device)
    eligible[ex[ex >= 0]] = False
    return random_slots(eligible, count, generator)
