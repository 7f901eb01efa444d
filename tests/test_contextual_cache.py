"""ContextualCache (stml_memory's teacher side) against the fused contextual_similarity over batch ∪ live memory."""
import pytest
import torch
import torch.nn.functional as F

from ssml_fast.memory import FeatureQueue
from ssml_fast.memory.contextual_cache import ContextualCache
from ssml_fast.ops import contextual_similarity


def fused_rows(t, ids, mem_t, mem_ids, live, k, sigma):
    """The fused op at n = N + K on [batch; live memory], rows of the batch."""
    emb = torch.cat([t, mem_t[live]])
    return contextual_similarity(emb, k, sigma, torch.cat([ids, mem_ids[live]]))[: t.shape[0]]


SEARCHES = ["scan", "lists"]  # the CPU kernel's exact scan; the kept lists (the PyTorch path of other devices)


def run_steps(size, n, d, k, steps, seed=0, id_range=60, sigma=3.0, search="auto"):
    g = torch.Generator().manual_seed(seed)
    queue = FeatureQueue(size, d)
    cache = ContextualCache(size, neighbour_search=search)
    checked = 0
    for step in range(steps):
        t = torch.randn(n, d, generator=g)
        ids = torch.randint(0, id_range, (n // 2,), generator=g).repeat(2)  # two views share an id
        mem_t, _, mem_ids = queue.view()
        if len(queue) and n + int((~torch.isin(mem_ids, ids)).sum()) >= k:
            w, live = cache.weights(t, ids, mem_t, mem_ids, (queue.ptr, queue.count), k, sigma)
            want = fused_rows(t, ids, mem_t, mem_ids, live, k, sigma)
            assert w.shape == want.shape
            torch.testing.assert_close(w, want, atol=2e-6, rtol=0, msg=lambda s: f"step {step}: {s}")
            checked += 1
        ptr = queue.ptr
        queue.enqueue(t, ids=ids)  # raw rows: the cache normalises (and keeps the inverse norms)
        cache.enqueued(ptr, n, queue.view()[0], (queue.ptr, queue.count))
    return checked, cache, queue


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("size,n,k", [(64, 12, 4), (100, 16, 10), (50, 20, 6), (30, 40, 5)])
def test_every_step_equals_the_fused_op(size, n, k, search):
    """Filling, wrapping around (also by a batch larger than the memory), ids repeated across steps
    (memory copies of one image rank first for each other; entries sharing a batch id are dropped)."""
    checked, _, _ = run_steps(size, n, 8, k, steps=12, seed=size + n, search=search)
    assert checked >= 10


@pytest.mark.parametrize("search", SEARCHES)
def test_out_of_step_cache_rebuilds_and_catches_up(search):
    """Enqueues the cache did not see (warm-up, other ranks) are caught: full rebuild, then incremental."""
    g = torch.Generator().manual_seed(3)
    queue, cache = FeatureQueue(40, 6), ContextualCache(40, neighbour_search=search)
    for _ in range(3):  # unseen
        queue.enqueue(F.normalize(torch.randn(10, 6, generator=g), dim=1), ids=torch.randint(100, 200, (10,), generator=g))
    for step in range(5):
        t, ids = torch.randn(8, 6, generator=g), torch.arange(4).repeat(2) + 10 * step
        mem_t, _, mem_ids = queue.view()
        w, live = cache.weights(t, ids, mem_t, mem_ids, (queue.ptr, queue.count), 5, 1.0)
        torch.testing.assert_close(w, fused_rows(F.normalize(t, dim=1), ids, mem_t, mem_ids, live, 5, 1.0), atol=2e-6, rtol=0)
        ptr = queue.ptr
        extra = F.normalize(torch.randn(3, 6, generator=g), dim=1)
        queue.enqueue(torch.cat([F.normalize(t, dim=1), extra]), ids=torch.cat([ids, torch.tensor([500, 501, 502]) + step]))
        cache.enqueued(ptr, 11, queue.view()[0], (queue.ptr, queue.count))  # not this batch's block: computed


@pytest.mark.parametrize("search", SEARCHES)
def test_exact_ties_use_the_index_rule(search):
    """Quantised rows (many equal similarities, exact copies): the tie fallback ranks whole rows."""
    g = torch.Generator().manual_seed(1)
    size, n, d, k = 48, 12, 16, 6
    queue, cache = FeatureQueue(size, d), ContextualCache(size, neighbour_search=search)
    for step in range(8):
        base = (torch.randint(0, 2, (6, d), generator=g) * 2 - 1).float() * 0.25  # unit rows, exact distances
        t = base[torch.randint(0, 6, (n,), generator=g)]
        ids = torch.arange(n // 2).repeat(2) + 100 * step
        mem_t, _, mem_ids = queue.view()
        if len(queue):
            w, live = cache.weights(t, ids, mem_t, mem_ids, (queue.ptr, queue.count), k, 3.0)
            torch.testing.assert_close(w, fused_rows(t, ids, mem_t, mem_ids, live, k, 3.0), atol=1e-6, rtol=0)
        ptr = queue.ptr
        queue.enqueue(t, ids=ids)
        cache.enqueued(ptr, n, queue.view()[0], (queue.ptr, queue.count))


def test_state_dict_round_trip_continues_identically():
    _, cache, queue = run_steps(64, 12, 8, 4, steps=8, seed=5)
    clone = ContextualCache(64)
    clone.load_state_dict(cache.state_dict())
    assert torch.equal(clone.gram, cache.gram) and clone._state == cache._state
    t, ids = torch.randn(12, 8), torch.arange(6).repeat(2) + 1000
    mem_t, _, mem_ids = queue.view()
    a = cache.weights(t, ids, mem_t, mem_ids, (queue.ptr, queue.count), 4, 3.0)[0]
    b = clone.weights(t, ids, mem_t, mem_ids, (queue.ptr, queue.count), 4, 3.0)[0]
    assert torch.equal(a, b)


def test_bad_arguments():
    cache = ContextualCache(10)
    with pytest.raises(ValueError, match="mem_t"):
        cache.weights(torch.randn(4, 3), torch.arange(4), torch.randn(5, 3), torch.arange(5), (5, 6), 2, 3.0)
    with pytest.raises(ValueError, match="size"):
        ContextualCache(0)


def test_short_lists_fall_back_to_full_rows_and_stay_exact(monkeypatch):
    """Lists far shorter than k (and at most one new slot per enqueue): every memory row needs the full-row
    fallback or a cut raised by a refused new slot; w must not change."""
    import ssml_fast.memory.contextual_cache as cc

    monkeypatch.setattr(cc, "LIST_SIZE", 3)
    monkeypatch.setattr(cc, "NEW_TAKE", 1)
    calls = []
    original = cc.ContextualCache._memory_topk_rows
    monkeypatch.setattr(cc.ContextualCache, "_memory_topk_rows",
                        lambda self, rows, *a: calls.append(rows.numel()) or original(self, rows, *a))
    checked, cache, _ = run_steps(60, 12, 8, 6, steps=10, seed=11, search="lists")
    assert checked >= 8 and sum(calls) > 0 and cache.nbr_idx.shape[1] == 3
    assert bool(torch.isfinite(cache.nbr_val).all()) and bool(torch.isfinite(cache.nbr_cut).all())


def test_checkpoint_without_the_cache_loads_and_rebuilds():
    """A stml_memory checkpoint written before the cache existed: its state dict has no cache entries; the
    cache loads as out of step and its next weights equal the fused op (rebuilt from the memory)."""
    from torch import nn

    _, cache, queue = run_steps(64, 12, 8, 4, steps=6, seed=3)
    holder = nn.Module()
    holder.cache = ContextualCache(64)
    holder.load_state_dict({}, strict=True)  # nothing for the cache: no missing-key error
    assert holder.cache._state is None
    t, ids = torch.randn(12, 8), torch.arange(6).repeat(2) + 500
    mem_t, _, mem_ids = queue.view()
    w, live = holder.cache.weights(t, ids, mem_t, mem_ids, (queue.ptr, queue.count), 4, 3.0)
    torch.testing.assert_close(w, fused_rows(t, ids, mem_t, mem_ids, live, 4, 3.0), atol=2e-6, rtol=0)


def test_scan_and_lists_give_identical_targets_and_switch_over():
    """Both paths, step by step, bit for bit; a cache that scanned, then runs the lists path (another
    device, k > 64) rebuilds its lists first and stays exact; and back."""
    g = torch.Generator().manual_seed(21)
    queue = FeatureQueue(80, 8)
    scan, lists, switch = (ContextualCache(80, neighbour_search=s) for s in ("scan", "lists", "auto"))
    for step in range(14):
        t = torch.randn(16, 8, generator=g)
        ids = torch.randint(0, 40, (8,), generator=g).repeat(2)
        mem_t, _, mem_ids = queue.view()
        if len(queue):
            state = (queue.ptr, queue.count)
            a = scan.weights(t, ids, mem_t, mem_ids, state, 5, 3.0)[0]
            b = lists.weights(t, ids, mem_t, mem_ids, state, 5, 3.0)[0]
            switch.neighbour_search = "lists" if step % 5 in (3, 4) else "auto"
            c = switch.weights(t, ids, mem_t, mem_ids, state, 5, 3.0)[0]
            assert torch.equal(a, b) and torch.equal(a, c), step
        ptr = queue.ptr
        queue.enqueue(t, ids=ids)
        for cache in (scan, lists, switch):
            cache.enqueued(ptr, 16, queue.view()[0], (queue.ptr, queue.count))


def _rule_lists(sims, ids, dead_u, k):
    """The lists by a plain sort of every row on (self, same live id, similarity desc, column asc), dead last."""
    u = sims.shape[0]
    out = []
    for i in range(u):
        group = torch.full((u,), 2)
        group[(ids == ids[i]) & ~dead_u] = 1
        group[dead_u] = 3
        group[i] = 0
        # Stable sorts, last key first: (group, similarity desc, column asc); columns start in ascending order.
        order = torch.sort(-sims[i], stable=True).indices
        order = order[torch.sort(group[order], stable=True).indices]
        out.append(order[:k])
    return torch.stack(out)


@pytest.mark.parametrize("n,count,k,levels,dead_frac", [(6, 9, 8, None, 0.5), (20, 700, 10, None, 0.05),
                                                         (20, 700, 10, 3, 0.05), (16, 300, 12, None, 0.97),
                                                         (24, 1500, 10, None, 0.1), (24, 1500, 10, 3, 0.1)])
def test_scan_kernel_lists_follow_the_rule_and_fill_with_dead_slots(n, count, k, levels, dead_frac):
    """The kernel's lists against a plain sort: small memories, large ones (the pruned scan: 1500 slots are 23
    groups of 64 for ~10 wanted, with a partial group at the end), quantised rows (exact ties everywhere),
    and a memory so dead that lists are filled with dead slots."""
    g = torch.Generator().manual_seed(n + count)
    x = F.normalize(torch.randn(n + count, 5, generator=g), dim=1)
    if levels is not None:
        x = F.normalize(torch.round(x * levels), dim=1)  # few distinct rows: equal similarities
    x[3] = x[1]  # an exact copy: equal similarities, the lower column first
    sims = x @ x.T
    sims = torch.triu(sims) + torch.triu(sims, 1).T  # exactly symmetric, as the cache's blocks
    gram = torch.zeros(count + 3, count + 3)
    gram[:count, :count] = sims[n:, n:]
    ids = torch.randint(0, (n + count) // 2, (n + count,), generator=g)
    dead = torch.rand(count, generator=g) < dead_frac
    ids[n:][dead] = -1 - torch.arange(int(dead.sum()))  # dead slots: ids of their own, as the cache gives them
    blocks = (sims[:n, :n].contiguous(), sims[:n, n:].contiguous(), sims[n:, :n].contiguous())
    out = torch.ops.ssml_fast._contextual_cache_neighbours(*blocks, gram, count, ids, dead, k)
    dead_u = torch.cat([torch.zeros(n, dtype=torch.bool), dead])
    want = _rule_lists(sims, ids, dead_u, k)
    assert torch.equal(out, want), (out != want).any(1).nonzero()[:5]


def test_scan_kernel_bad_arguments_and_opcheck():
    n, count, k = 4, 6, 3
    sims = F.normalize(torch.randn(n + count, 3), dim=1) @ F.normalize(torch.randn(n + count, 3), dim=1).T
    sims = torch.triu(sims) + torch.triu(sims, 1).T
    blocks = (sims[:n, :n].contiguous(), sims[:n, n:].contiguous(), sims[n:, :n].contiguous())
    gram, ids, dead = sims[n:, n:].contiguous(), torch.arange(n + count), torch.zeros(count, dtype=torch.bool)
    with pytest.raises(ValueError, match="k must be"):
        torch.ops.ssml_fast._contextual_cache_neighbours(*blocks, gram, count, ids, dead, 65)
    with pytest.raises(ValueError, match="neighbour_search"):
        ContextualCache(8, neighbour_search="fast")
    op = torch.ops.ssml_fast._contextual_cache_neighbours.default
    torch.library.opcheck(op, (*blocks, gram, count, ids, dead, k))
