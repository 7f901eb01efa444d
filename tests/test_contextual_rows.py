"""contextual_similarity_rows (w[:r] from given neighbour lists) against the fused op and the plain reference."""
import pytest
import torch

from ssml_fast.ops import contextual_similarity
from ssml_fast.ops.contextual_rows import contextual_similarity_rows, expansion_size

from reference.contextual import dyadic, reference


def ranked_lists(emb, k, ids=None):
    """N_k(i) by the fused op's rule (i, same id, ascending distance, lower index), float64 distances."""
    t = emb.double()
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    d2 = ((t[:, None] - t[None]) ** 2).sum(-1)
    n = t.shape[0]
    out = []
    for i in range(n):
        key = lambda j: (0 if j == i else (1 if ids is not None and ids[j] == ids[i] else 2), float(d2[i, j]), j)
        out.append(sorted(range(n), key=key)[:k])
    return torch.tensor(out, dtype=torch.long), d2


@pytest.mark.parametrize("n,k,r", [(1, 1, 1), (2, 1, 2), (7, 3, 2), (13, 5, 13), (40, 10, 12), (41, 41, 5),
                                   (64, 7, 1), (97, 12, 30)])
def test_rows_equal_the_reference_float64(n, k, r):
    g = torch.Generator().manual_seed(n * 7 + k)
    emb = torch.randn(n, 9, dtype=torch.float64, generator=g)
    ids = torch.randint(0, max(1, n // 2), (n,), generator=g)
    nn, d2 = ranked_lists(emb, k, ids)
    w, w_p, w_c = contextual_similarity_rows(nn, d2[:r], 3.0, return_parts=True)
    want = reference(emb, k, 3.0, ids)
    for name, got, ref in zip(("w", "w_p", "w_c"), (w, w_p, w_c), want):
        assert got.dtype == torch.float64 and got.shape == (r, n)
        torch.testing.assert_close(got, ref[:r], atol=1e-12, rtol=0, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("levels", [None, 5])
@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_exact_ties_match_the_fused_op(levels, k):
    """Dyadic rows: every distance exact in float32, duplicates and ties everywhere; same lists -> same w."""
    emb = dyadic(33, levels=levels, seed=k)
    nn, d2 = ranked_lists(emb, k)
    fused = contextual_similarity(emb, k, 3.0)
    got = contextual_similarity_rows(nn, d2[:10].float(), 3.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fused[:10], atol=1e-6, rtol=0)


def test_float32_rows_match_the_fused_op_at_batch_scale():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(300, 32, generator=g)
    ids = torch.arange(300) // 2
    nn, d2 = ranked_lists(emb, 10, ids)
    torch.testing.assert_close(contextual_similarity_rows(nn, d2[:60].float(), 3.0),
                               contextual_similarity(emb, 10, 3.0, ids)[:60], atol=2e-6, rtol=0)


def test_expansion_size_is_half_to_even():
    assert [expansion_size(k) for k in (1, 2, 3, 4, 5, 10, 11)] == [1, 1, 2, 2, 2, 5, 6]


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(3, 2), torch.zeros(1, 3)), "int64"),
    ((torch.zeros(3, 4, dtype=torch.long), torch.zeros(1, 3)), "1 <= k <= n"),
    ((torch.zeros(3, 2, dtype=torch.long), torch.zeros(1, 4)), "sqdist_rows"),
    ((torch.zeros(3, 2, dtype=torch.long), torch.zeros(4, 3)), "sqdist_rows"),
])
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        contextual_similarity_rows(*args)
    with pytest.raises(ValueError, match="sigma"):
        contextual_similarity_rows(torch.zeros(3, 2, dtype=torch.long), torch.zeros(1, 3), sigma=0.0)


# ---- the CPU kernel of the sparse part (ssml_fast::_contextual_expansion_rows) against the PyTorch version ----
from hypothesis import given, settings, strategies as st  # noqa: E402

from ssml_fast.ops.contextual_rows import _expansion_torch  # noqa: E402


def _random_lists(n, k, seed, local):
    """(n, k) lists, i itself first, then distinct rows: near indices (many reciprocal pairs) or anywhere."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, k, dtype=torch.long)
    for i in range(n):
        if local:
            pool = torch.tensor([j % n for j in range(i - k, i + k + 1) if j % n != i]).unique()
        else:
            pool = torch.tensor([j for j in range(n) if j != i], dtype=torch.long)
        pick = pool[torch.randperm(pool.numel(), generator=g)[: k - 1]]
        out[i] = torch.cat([torch.tensor([i]), pick])
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(1, 12), r_frac=st.floats(0, 1), seed=st.integers(0, 999),
       local=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_kernel_is_bitwise_the_torch_version(n, k, r_frac, seed, local, dtype):
    k = min(k, n)
    nn = _random_lists(n, k, seed, local)
    r = int(round(r_frac * n))
    got = torch.ops.ssml_fast._contextual_expansion_rows(nn, r, dtype)
    want = _expansion_torch(nn, r, dtype)
    assert got.dtype == dtype and got.shape == (r, n)
    assert torch.equal(got, want)


def test_kernel_thread_count_invariant_at_memory_scale():
    nn = _random_lists(700, 10, 3, local=True)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.ssml_fast._contextual_expansion_rows(nn, 64, torch.float32)
        torch.set_num_threads(2)
        two = torch.ops.ssml_fast._contextual_expansion_rows(nn, 64, torch.float32)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two) and torch.equal(one, _expansion_torch(nn, 64, torch.float32))


def test_kernel_bad_arguments_and_opcheck():
    nn = _random_lists(9, 3, 0, local=False)
    with pytest.raises(ValueError, match=r"entries must be in \[0, 9\)"):
        torch.ops.ssml_fast._contextual_expansion_rows(torch.where(nn == 4, 9, nn), 2, torch.float32)
    with pytest.raises(ValueError, match="rows must be in"):
        torch.ops.ssml_fast._contextual_expansion_rows(nn, 10, torch.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        torch.ops.ssml_fast._contextual_expansion_rows(nn, 2, torch.float16)
    torch.library.opcheck(torch.ops.ssml_fast._contextual_expansion_rows.default, (nn, 4, torch.float32))
