"""The teacher side of STML with a memory: contextual similarity of the batch over batch ∪ memory, with the
memory's Gram matrix kept from step to step (`stml_memory`, thesis 6.2).

Computed from scratch (the fused `contextual_similarity` at n = N + M), every step pays an n x n x d GEMM
(N 240 + M 4096, d 1024: 38 GFLOP, over a second on this CPU) and n^2 work, although the memory's teacher
embeddings are constants once stored: only the N new rows change. `ContextualCache` keeps G = <t_s, t_u>
for the memory slots s, u (L2-normalised teacher rows) and each step computes only the batch's block
(N x M GEMM), the neighbour lists of all N + M rows, and the N batch rows of w with
`ops.contextual_similarity_rows`. Each memory slot also keeps its `list_size` nearest memory slots with a
bound `cut` on every slot outside them (G <= cut); an enqueue drops the overwritten slots from the lists
and merges the new ones in (raising the cut to the largest value dropped), so a step needs no pass over
the M x M cache: a row whose list runs short (too many entries dead this step, or a tie at the cut) is
ranked from its full cache row instead, and its list rebuilt. After the batch is enqueued, its block (already
computed) is written into the slots it took: the cache never needs a GEMM of its own except when it is out
of step with the queue (first use after warm-up, a load from an older checkpoint, rows enqueued by other
ranks under torch.distributed: then the missing rows are computed from the queue's storage).

On the CPU (`neighbour_search="auto"`, the default there, or "scan") the lists of all N + M rows come from
a kernel instead (`ssml_fast::_contextual_cache_neighbours`): an exact scan of each row's cached similarities
with a k-entry buffer, pruned by a proven bound, ~17 ms at M = 4096 against ~85 ms for the kept lists' merge
and upkeep in PyTorch ops
(which exist because a torch.topk over the M x (N + M) similarities costs more still). The kept lists are then
not maintained; they are rebuilt from the cache if the lists path is used later (another device, k > 64).
Both paths give the same lists (tested).

Same rule as the fused op for the neighbour lists, over the columns U = [batch rows; memory slots in slot
order]: i itself, then the rows sharing its id, then descending similarity (= ascending distance of unit
rows), equal similarities to the lower column. Memory slots in `dead` (entries sharing an id with the batch,
which stml_memory drops) take part in nothing. Distances are 2 - 2 G, from the cached blocks rather than one
GEMM over everything, so w can differ from the fused op's only where two similarities are within float
rounding of each other (tested equal on generic data; exact ties resolved by the index rule).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import _validation
from ..ops.contextual_rows import contextual_similarity_rows

_NEG = float("-inf")
# Stored in place of -inf in the list buffers (the trainer checks every floating buffer for finiteness);
# below every similarity of unit rows (>= -1), so it orders the same.
_EMPTY = -4.0
LIST_SIZE = 32  # nearest memory slots kept per slot between steps (k = 10 takes at most 10 of them)
NEW_TAKE = 8    # new slots one enqueue may add to a list (more than that beating the cut raises the cut)
SEARCHES = ("auto", "scan", "lists")
_SCAN_MAX_K = 64  # the kernel's per-row buffer


class ContextualCache(nn.Module):
    """Gram cache of a queue's L2-normalised teacher rows and STML's contextual similarity over batch ∪ memory.

    size: the queue's slots M. The cache holds a float32 (M, M) buffer (64 MB at M = 4096), saved with the
    state dict so a resumed run continues bit-identically. It follows a queue through `weights` (before the
    batch is enqueued) and `enqueued` (after); when it cannot tell that it is in step, it rebuilds itself
    from the memory rows it is given.
    """

    def __init__(self, size: int, neighbour_search: str = "auto"):
        super().__init__()
        size = _validation.check_size("size", size)
        # "scan": the CPU kernel's exact scan every step; "lists": the kept lists (PyTorch, any device);
        # "auto": scan for CPU tensors (k <= 64), lists elsewhere.
        self.neighbour_search = _validation.check_choice("neighbour_search", neighbour_search, SEARCHES)
        self.register_buffer("gram", torch.zeros(size, size))
        # 1 / ||t_s|| per slot: the batch's block is (t^ @ mem_t^T) * inv_norm, with no per-step normalised copy
        # of the memory (4096 x 1024 read and written twice).
        self.register_buffer("inv_norm", torch.zeros(size))
        # Per slot: its LIST_SIZE nearest other slots (slot, similarity), best first with ties to the lower
        # slot, -1 / -inf where empty; every slot outside the list has similarity <= cut.
        self.register_buffer("nbr_idx", torch.full((size, LIST_SIZE), -1, dtype=torch.long))
        self.register_buffer("nbr_val", torch.full((size, LIST_SIZE), _EMPTY))
        self.register_buffer("nbr_cut", torch.full((size,), _EMPTY))
        self._state: tuple[int, int] | None = None  # (ptr, count) of the queue the cache matches
        self._block = None                          # (G_bb, G_bm, (ptr, count), G_bm^T | None) for `enqueued`
        self._lists_fresh = True                    # nbr_* match the cache (not kept once the scan is used)

    @property
    def size(self) -> int:
        return self.gram.shape[0]

    def invalidate(self) -> None:
        self._state, self._block = None, None

    def _scan(self, device: torch.device, k: int) -> bool:
        if self.neighbour_search == "scan":
            if device.type != "cpu" or k > _SCAN_MAX_K:
                raise ValueError(f"neighbour_search='scan' needs CPU tensors and k <= {_SCAN_MAX_K}, got "
                                 f"{device.type} and k={k}")
            return True
        return self.neighbour_search == "auto" and device.type == "cpu" and k <= _SCAN_MAX_K

    @torch.no_grad()
    def weights(self, batch_t: torch.Tensor, ids: torch.Tensor, mem_t: torch.Tensor, mem_ids: torch.Tensor,
                queue_state: tuple[int, int], k: int, sigma: float, dead: torch.Tensor | None = None):
        """w (N, N + K): the batch rows' contextual similarity over [batch; live memory slots in slot order].

        batch_t (N, d) teacher embeddings; ids (N,) dataset ids; mem_t (count, d) the memory's teacher rows
        in slot order (a strided view of the queue is fine); both are L2-normalised here; mem_ids (count,);
        queue_state: the queue's (ptr, count) now; dead (count,) bool: slots left out (default:
        those whose id is in `ids`). Returns (w, live) with live (count,) bool = ~dead.
        """
        n, count = batch_t.shape[0], mem_t.shape[0]
        if count != queue_state[1] or count > self.size:
            raise ValueError(f"mem_t has {count} rows but the queue holds {queue_state[1]} (size {self.size})")
        dev = batch_t.device
        if self.gram.device != dev:
            raise ValueError(f"batch_t is on {dev} but the cache is on {self.gram.device}")
        t = _unit(batch_t.detach().float())
        mem_t = mem_t.detach().float()
        if dead is None:
            dead = torch.isin(mem_ids, ids)
        scan = self._scan(dev, k)
        if self._state != tuple(queue_state):  # out of step: one full GEMM, then incremental again
            self.inv_norm[:count] = _inv_norm(mem_t)
            unit = mem_t * self.inv_norm[:count, None]
            self.gram[:count, :count] = _symmetric(unit @ unit.T)
            self._lists_fresh = False
            self._state = tuple(queue_state)
        if scan:  # the scan needs no lists: from now on they are not kept (rebuilt if the lists path runs)
            self._lists_fresh = False
        elif not self._lists_fresh:  # the scan ran before (or the cache was rebuilt): lists anew
            self._rebuild_lists(torch.arange(count, device=dev), count)
            self._lists_fresh = True
        g_bb = _symmetric(t @ t.T)
        g_bm = (t @ mem_t.T).mul_(self.inv_norm[:count])
        # g_bm^T, contiguous: the scan reads the memory rows' batch columns from it, and `enqueued` writes the
        # batch's cache columns from it (row by row, not a strided copy of g_bm).
        g_mb = g_bm.t().contiguous() if scan else None
        self._block = (g_bb, g_bm, tuple(queue_state), g_mb)
        ids_u = torch.cat([ids, mem_ids])
        # Dead slots get ids of their own (below every real id) so they share none.
        ids_u[n:][dead] = ids_u.min() - 1 - torch.arange(int(dead.sum()), device=dev)
        g_rows = torch.cat([g_bb, g_bm], dim=1)  # the batch rows over U
        d2 = (2.0 - 2.0 * g_rows).clamp_min_(0.0)
        d2[torch.arange(n, device=dev), torch.arange(n, device=dev)] = 0.0
        if scan:
            nn_u = torch.ops.ssml_fast._contextual_cache_neighbours(g_bb, g_bm, g_mb, self.gram, count, ids_u, dead,
                                                                    k)
        else:
            nn_u = self._neighbour_lists(g_bb, g_bm, g_rows, count, ids_u, dead, k)  # masks g_rows in place
        w = contextual_similarity_rows(nn_u, d2, sigma)
        live = ~dead
        # index_select by positions: a boolean mask over the columns is ~7x slower at (240, 4336).
        keep_cols = torch.cat([torch.arange(n, device=dev), n + torch.nonzero(live).flatten()])
        return w.index_select(1, keep_cols), live

    @torch.no_grad()
    def enqueued(self, ptr_before: int, rows: int, mem_t_after: torch.Tensor, queue_state: tuple[int, int]) -> None:
        """Bring the cache in step after `rows` rows were written to slots ptr_before, ptr_before + 1, ...
        (mod M). mem_t_after: the memory's teacher rows [:count] after the enqueue.
        The batch's own block from `weights` is reused when those rows are this step's batch; otherwise
        (other ranks' rows, no `weights` call this step) the written rows' block is computed from storage."""
        block, self._block = self._block, None
        if self._state is None:
            return
        count_after = queue_state[1]
        m = self.size
        written = min(rows, m)
        slots = (ptr_before + (rows - written) + torch.arange(written, device=self.gram.device)) % m
        old_count = self._state[1]
        self.inv_norm[slots] = _inv_norm(mem_t_after[slots].float())
        if block is not None and block[2] == self._state and block[0].shape[0] == rows:
            g_bb, g_bm, _, g_mb = block
            g_bb, g_bm = g_bb[rows - written:, rows - written:], g_bm[rows - written:]
            g_mb = g_bm.T if g_mb is None else g_mb[:, rows - written:]
            for part, (a, b) in _ring_runs(slots):  # contiguous runs: slice copies, not scattered writes
                self.gram[a:b, :old_count] = g_bm[part]
                self.gram[:old_count, a:b] = g_mb[:, part]
            self.gram[slots.unsqueeze(1), slots.unsqueeze(0)] = g_bb
        else:
            unit = mem_t_after.float() * self.inv_norm[:count_after, None]
            g = unit[slots] @ unit.T
            g[:, slots] = _symmetric(g[:, slots])
            self.gram[slots, :count_after] = g
            self.gram[:count_after, slots] = g.T
        if self._lists_fresh:
            self._update_lists(slots, count_after)
        self._state = tuple(queue_state)

    def _rebuild_lists(self, rows: torch.Tensor, count: int) -> None:
        """The lists of memory slots `rows` from their full cache rows over slots [0, count)."""
        if rows.numel() == 0:
            return
        g = self.gram[rows, :count].clone()
        g[torch.arange(rows.numel(), device=g.device), rows] = _NEG  # not its own neighbour
        val, idx = _topk(g, LIST_SIZE + 1)
        idx, val = _rank(idx, val)
        idx = idx.masked_fill(val == _NEG, -1)
        width = min(LIST_SIZE, val.shape[1])
        self.nbr_idx[rows] = -1
        self.nbr_val[rows] = _EMPTY
        self.nbr_idx[rows, :width] = idx[:, :width]
        self.nbr_val[rows, :width] = val[:, :width].clamp_min(_EMPTY)
        self.nbr_cut[rows] = val[:, LIST_SIZE].clamp_min(_EMPTY) if val.shape[1] > LIST_SIZE else _EMPTY

    def _update_lists(self, slots: torch.Tensor, count: int) -> None:
        """After `slots` were overwritten (cache rows and columns already written): every other slot's list
        loses the overwritten entries and takes in the new slots that beat its cut; the new slots' lists are
        built from their rows. A new slot that beats the cut but finds no room raises the cut to its value."""
        dev = self.gram.device
        idx, val = self.nbr_idx[:count], self.nbr_val[:count]
        written = torch.zeros(self.size, dtype=torch.bool, device=dev)
        written[slots] = True
        gone = (written[idx.clamp_min(0)] & (idx >= 0)) | (idx < 0)
        idx, val = idx.masked_fill(gone, -1), val.masked_fill(gone, _NEG)
        # The new slots as seen from each row: their column block (= their rows, by symmetry).
        new_val = self.gram[slots, :count].clone()                   # (new, count): row r = slot slots[r]
        new_val[torch.arange(slots.numel(), device=dev), slots] = _NEG  # a slot is not its own neighbour
        # Only the few new slots above a row's cut can enter its list (~ N x LIST_SIZE / M of them): found
        # by one comparison, grouped per row; the best NEW_TAKE per row go in, and the next one (when there
        # is one above the cut) becomes the cut.
        new_r, row = torch.nonzero(new_val > self.nbr_cut[None, :count], as_tuple=True)
        v = new_val[new_r, row]
        order = torch.argsort(-v, stable=True)
        order = order[torch.argsort(row[order], stable=True)]          # by row, then value descending
        new_r, row, v = new_r[order], row[order], v[order]
        first = torch.searchsorted(row, row, side="left")
        rank = torch.arange(row.numel(), device=dev) - first
        over = rank == NEW_TAKE
        self.nbr_cut[row[over]] = torch.maximum(self.nbr_cut[row[over]], v[over])
        keep = rank < NEW_TAKE
        nv = torch.full((count, NEW_TAKE), _NEG, device=dev)
        ni = torch.full((count, NEW_TAKE), -1, dtype=torch.long, device=dev)
        nv[row[keep], rank[keep]] = v[keep]
        ni[row[keep], rank[keep]] = slots[new_r[keep]]
        u_val, u_idx = torch.cat([val, nv], 1), torch.cat([idx, ni], 1)
        top_val, pos = _topk(u_val, LIST_SIZE + 1)
        top_idx, top_val = _rank(torch.gather(u_idx, 1, pos), top_val)
        top_idx = top_idx.masked_fill(top_val == _NEG, -1)
        width = min(LIST_SIZE, top_val.shape[1])
        self.nbr_idx[:count, :width] = top_idx[:, :width]
        self.nbr_val[:count, :width] = top_val[:, :width].clamp_min(_EMPTY)
        if top_val.shape[1] > LIST_SIZE:
            self.nbr_cut[:count] = torch.maximum(self.nbr_cut[:count], top_val[:, LIST_SIZE].clamp_min(_EMPTY))
        self._rebuild_lists(slots, count)

    def get_extra_state(self):
        return {"state": None if self._state is None else list(self._state), "lists_fresh": self._lists_fresh}

    def set_extra_state(self, state):
        st = state.get("state") if isinstance(state, dict) else None
        self._state, self._block = (None if st is None else (int(st[0]), int(st[1]))), None
        # Checkpoints from before the scan existed always kept their lists.
        self._lists_fresh = bool(state.get("lists_fresh", True)) if isinstance(state, dict) else True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A checkpoint from before the cache existed (stml_memory without it) loads: the cache is left out of
        # step and rebuilds itself from the memory at its next use (one M x M GEMM), nothing else changes.
        names = [prefix + n for n, _ in self.named_buffers(recurse=False)]
        if not any(n in state_dict for n in names):
            self.invalidate()
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"size={self.size}, neighbour_search={self.neighbour_search!r}, list_size={LIST_SIZE}, "
                f"in_step={self._state is not None}")

    def _neighbour_lists(self, g_bb, g_bm, g_rows, count, ids_u, dead, k):
        """(N + count, k) neighbour lists over U in rank order (see the module docstring). g_rows: the batch
        rows over U, [g_bb, g_bm]; used as the batch rows' ranking key, so masked in place."""
        n = g_bb.shape[0]
        u = n + count
        dev = g_bb.device
        # Forced entries: i itself, then the rows sharing its id, by similarity then column.
        order = torch.argsort(ids_u, stable=True)
        sorted_ids = ids_u[order]
        _, inverse, counts = torch.unique_consecutive(sorted_ids, return_inverse=True, return_counts=True)
        gmax = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        members = torch.full((counts.shape[0], gmax), -1, dtype=torch.long, device=dev)
        pos = torch.arange(u, device=dev) - starts[inverse]
        members[inverse, pos] = order
        group_of = torch.empty(u, dtype=torch.long, device=dev)
        group_of[order] = inverse
        forced = members[group_of]                                  # (u, gmax), -1 padded
        rows = torch.arange(u, device=dev)[:, None]
        valid = forced >= 0
        fsim = self._gram_at(g_bb, g_bm, rows.expand_as(forced), forced.clamp_min(0))
        fsim = torch.where(valid, fsim, torch.full_like(fsim, _NEG))
        fsim = torch.where(forced == rows, torch.full_like(fsim, float("inf")), fsim)  # self first
        forced, fsim = _rank(forced.clamp_min(0), fsim)
        valid = fsim > _NEG                                          # after ranking: the real entries first
        forced = torch.where(valid, forced, rows)                    # pads -> the row itself (masked anyway)
        nf = valid.sum(1).clamp_max(k)                               # (u,)

        # The rest: the top (k + 1) of each row among the other live columns, batch and memory parts apart.
        c = k + 1
        key_b = g_rows
        key_b[:, n:][:, dead] = _NEG
        bf = forced[:n]
        key_b.scatter_(1, bf, _NEG)                                  # forced (padded with self: also masked)
        cb_val, cb_col = _topk(key_b, c)
        # Memory rows: their kept lists, and the batch columns that can compete with them.
        mm_val, mm_col = self._list_candidates(count, dead, ids_u[n:])
        mb_val, mb_col = _batch_candidates(g_bm, mm_val, (k - nf[n:]).clamp_min(1), c)
        mem_val = torch.cat([mb_val, mm_val], dim=1)
        mem_col = torch.cat([mb_col, torch.where(mm_col >= 0, mm_col + n, mm_col)], dim=1)
        # Pad the batch rows' candidates to the memory rows' width so all rows merge at once.
        width = mem_val.shape[1]
        pad = width - cb_val.shape[1]
        cb_val = torch.cat([cb_val, cb_val.new_full((n, pad), _NEG)], 1)
        cb_col = torch.cat([cb_col, cb_col.new_full((n, pad), -2)], 1)
        out, bad = _select(forced, nf, torch.cat([cb_col, mem_col]), torch.cat([cb_val, mem_val]), k)
        bad_mem = torch.nonzero(bad[n:]).flatten()
        if bad_mem.numel():
            # Lists that ran short this step: candidates from the full cache rows, and fresh lists.
            full_val, full_col = self._memory_topk_rows(bad_mem, count, dead, ids_u[n:], c)
            rows_u = bad_mem + n
            bv, bc = _batch_candidates(g_bm[:, bad_mem], None, None, c)  # exact top c over the batch columns
            o2, b2 = _select(forced[rows_u], nf[rows_u],
                             torch.cat([bc, torch.where(full_col >= 0, full_col + n, full_col)], 1),
                             torch.cat([bv, full_val], 1), k)
            out[rows_u] = o2
            bad[rows_u] = b2
            self._rebuild_lists(bad_mem, count)
        if bool(bad.any()):  # ties at the cut (exact copies, quantised features): the full stable order
            for i in torch.nonzero(bad).flatten().tolist():
                out[i] = self._exact_row(i, g_bb, g_bm, count, ids_u, dead, k)
        return out

    def _list_candidates(self, count, dead, ids_mem):
        """Each memory row's kept list without this step's dead slots and its forced (same-id) entries,
        followed by a sentinel (column -1) at the row's cut: selecting it means the list is not enough."""
        idx, val = self.nbr_idx[:count], self.nbr_val[:count]
        safe = idx.clamp_min(0)
        drop = (idx < 0) | dead[safe] | (ids_mem[safe] == ids_mem[:, None])
        val = val.masked_fill(drop, _NEG)
        idx = idx.masked_fill(drop, -2)
        return (torch.cat([val, self.nbr_cut[:count, None]], 1),
                torch.cat([idx, torch.full_like(idx[:, :1], -1)], 1))

    def _memory_topk_rows(self, rows, count, dead, ids_mem, c):
        """Top c of memory rows `rows` over the live memory columns without their forced entries."""
        g = self.gram[rows, :count].clone()
        g[:, dead] = _NEG
        g[ids_mem[rows][:, None] == ids_mem[None, :]] = _NEG  # itself and its id's other copies
        val, col = _topk(g, c)
        if val.shape[1] < c:
            val = torch.cat([val, val.new_full((rows.numel(), c - val.shape[1]), _NEG)], 1)
            col = torch.cat([col, col.new_full((rows.numel(), c - col.shape[1]), -2)], 1)
        return val, col.masked_fill(val == _NEG, -2)

    def _gram_at(self, g_bb, g_bm, i, j):
        """G[i, j] for index tensors over U (batch rows first, then memory slots)."""
        n = g_bb.shape[0]
        ib, jb = i < n, j < n
        out = torch.empty(i.shape, dtype=g_bb.dtype, device=g_bb.device)
        bb = ib & jb
        out[bb] = g_bb[i[bb], j[bb]]
        bm = ib & ~jb
        out[bm] = g_bm[i[bm], j[bm] - n]
        mb = ~ib & jb
        out[mb] = g_bm[j[mb], i[mb] - n]
        mm = ~ib & ~jb
        out[mm] = self.gram[i[mm] - n, j[mm] - n]
        return out

    def _exact_row(self, i, g_bb, g_bm, count, ids_u, dead, k):
        """Row i's list by a full stable sort of its similarities (the tie fallback)."""
        n = g_bb.shape[0]
        if i < n:
            row = torch.cat([g_bb[i], g_bm[i]])
        else:
            row = torch.cat([g_bm[:, i - n], self.gram[i - n, :count]])
        row = row.clone()
        row[n:][dead] = _NEG
        group = torch.full_like(row, 2.0)
        group[ids_u == ids_u[i]] = 1.0
        group[i] = 0.0
        dead_u = torch.cat([torch.zeros(n, dtype=torch.bool, device=row.device), dead])
        group[dead_u & (torch.arange(row.shape[0], device=row.device) != i)] = 3.0
        # Sort by (group asc, similarity desc, column asc): two stable sorts.
        idx = torch.argsort(-row, stable=True)
        idx = idx[torch.argsort(group[idx], stable=True)]
        return idx[:k]


def _ring_runs(slots: torch.Tensor):
    """(positions, (start, stop)) of the runs of consecutive slots: a ring write wraps at most once."""
    s = slots.tolist()
    runs, start = [], 0
    for i in range(1, len(s) + 1):
        if i == len(s) or s[i] != s[i - 1] + 1:
            runs.append((slice(start, i), (s[start], s[i - 1] + 1)))
            start = i
    return runs


def _inv_norm(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / x.norm(dim=1).clamp_min(1e-12)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x * _inv_norm(x)[:, None]


def _symmetric(g: torch.Tensor) -> torch.Tensor:
    """The upper triangle mirrored: a GEMM may round (i, j) and (j, i) differently."""
    upper = torch.triu(g)
    return upper + torch.triu(g, 1).T


def _topk(x: torch.Tensor, c: int):
    c = min(c, x.shape[1])
    if c == 0:
        return x.new_empty(x.shape[0], 0), torch.empty(x.shape[0], 0, dtype=torch.long, device=x.device)
    return torch.topk(x, c, dim=1, largest=True, sorted=True)


def _rank(cols: torch.Tensor, vals: torch.Tensor):
    """Each row's (column, value) pairs by value descending, equal values by column ascending."""
    by_col = torch.argsort(cols, dim=1, stable=True)
    cols, vals = torch.gather(cols, 1, by_col), torch.gather(vals, 1, by_col)
    by_val = torch.argsort(-vals, dim=1, stable=True)
    return torch.gather(cols, 1, by_val), torch.gather(vals, 1, by_val)


def _batch_candidates(g_bm, list_val, need, c):
    """(val, col) (rows, c) per memory row: its best c batch columns, best first, -inf / -2 padded.

    With the rows' list candidates `list_val` and the number `need` each row takes after its forced entries,
    only batch columns at or above the need-th best list value can be taken (or tie with the last taken), so
    those are found by one comparison over g_bm (N x M) and grouped per row, instead of a top-k down each of
    the M columns (~16 ms at N = 240, M = 4096). list_val None: the exact top c of every row."""
    n, count = g_bm.shape
    dev = g_bm.device
    c = min(c, n)
    val = torch.full((count, c), _NEG, device=dev)
    col = torch.full((count, c), -2, dtype=torch.long, device=dev)
    if n == 0 or count == 0:
        return val, col
    if list_val is None:
        tv, tc = torch.topk(g_bm, c, dim=0, largest=True, sorted=True)
        return tv.T.contiguous(), tc.T.contiguous()
    ranked = torch.sort(list_val, dim=1, descending=True).values
    tau = torch.gather(ranked, 1, (need - 1).clamp_max(ranked.shape[1] - 1)[:, None]).squeeze(1)
    r, m = torch.nonzero(g_bm >= tau[None, :], as_tuple=True)
    v = g_bm[r, m]
    order = torch.argsort(-v, stable=True)
    order = order[torch.argsort(m[order], stable=True)]  # by memory row, then value descending
    r, m, v = r[order], m[order], v[order]
    rank = torch.arange(m.numel(), device=dev) - torch.searchsorted(m, m, side="left")
    keep = rank < c
    val[m[keep], rank[keep]] = v[keep]
    col[m[keep], rank[keep]] = r[keep]
    return val, col


def _select(forced, nf, cand_col, cand_val, k):
    """Lists (rows, k): the nf forced entries, then the best candidates by (value desc, column asc). bad
    marks rows where that is not provably the exact order: a tie between the last taken candidate and the
    next, a taken -inf (too few live columns), or a taken sentinel / dropped entry (column < 0)."""
    dev = cand_col.device
    cand_col, cand_val = _rank(cand_col, cand_val)
    slot = torch.arange(k, device=dev)[None, :]
    from_forced = slot < nf[:, None]
    rest_pos = (slot - nf[:, None]).clamp_min(0)
    taken = torch.gather(cand_col, 1, rest_pos)
    out = torch.where(from_forced, forced[:, :k] if forced.shape[1] >= k else _pad_cols(forced, k), taken)
    need = k - nf
    has_rest = need > 0
    last = torch.gather(cand_val, 1, (need - 1).clamp_min(0)[:, None]).squeeze(1)
    nxt = torch.gather(cand_val, 1, need.clamp_max(cand_val.shape[1] - 1)[:, None]).squeeze(1)
    negative = ((taken < 0) & ~from_forced).any(dim=1)
    bad = has_rest & ((last == nxt) | (last == _NEG) | negative)
    return out, bad


def _pad_cols(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros((x.shape[0], k - x.shape[1]))], 1)
