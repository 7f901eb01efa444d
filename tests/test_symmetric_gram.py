"""The CPU's lower-triangle Gram (csrc/cpu/symmetric_gram.cpp), seen through the ops that use it:
pairwise_distance(x, x) and the contextual similarity's Gram. Checked against float64 products: every tail of
its 6 x 16 register tiles, 48-row blocks and 256-deep k blocks, exact symmetry, thread-count invariance,
non-finite rows."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import ssml_fast  # noqa: F401  (loads the ops)

pdist = torch.ops.ssml_fast.pairwise_distance


def _ref(x, metric):
    x = x.double()
    if metric == "cosine":
        u = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return 1 - u @ u.T
    d2 = (x * x).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2 * x @ x.T
    d2 = d2.clamp_min(0).fill_diagonal_(0)
    return d2 if metric == "sqeuclidean" else d2.sqrt()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 120), d=st.sampled_from([1, 3, 16, 255, 256, 257, 600]),
       metric=st.sampled_from(["euclidean", "sqeuclidean", "cosine"]), seed=st.integers(0, 2**16))
def test_against_float64(n, d, metric, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    out = pdist(x, x, metric)
    ref = _ref(x, metric)
    # squared distances carry the Gram's absolute error (~d * eps * |x|^2); sqrt amplifies it near 0
    atol = 1e-3 if metric == "euclidean" else 2e-5 * d
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=1e-4)
    assert torch.equal(out, out.T), "x against itself must give an exactly symmetric matrix"
    assert torch.all(out.diagonal() == 0)


@pytest.mark.parametrize("n,d", [(240, 1024), (253, 300), (49, 1000), (6, 16), (97, 257)])
def test_block_tails_match_float64(n, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n + d))
    g = pdist(x, x, "sqeuclidean").double()
    torch.testing.assert_close(g, _ref(x, "sqeuclidean"), atol=1e-6 * d * 4, rtol=1e-5)


def test_bitwise_same_for_any_thread_count():
    x = torch.randn(301, 700, generator=torch.Generator().manual_seed(3))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pdist(x, x, "euclidean")
        w1 = torch.ops.ssml_fast.contextual_similarity(x, 10, 3.0, torch.arange(301))[0]
        torch.set_num_threads(2)
        two = pdist(x, x, "euclidean")
        w2 = torch.ops.ssml_fast.contextual_similarity(x, 10, 3.0, torch.arange(301))[0]
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)
    assert torch.equal(w1, w2)


def test_zero_columns_and_single_row():
    assert torch.equal(pdist(torch.zeros(5, 0), torch.zeros(5, 0).clone(), "euclidean"), torch.zeros(5, 5))
    x = torch.zeros(5, 0)
    assert torch.equal(pdist(x, x, "euclidean"), torch.zeros(5, 5))
    one = torch.randn(1, 9)
    assert torch.equal(pdist(one, one, "euclidean"), torch.zeros(1, 1))


def test_nan_row_stays_in_its_row_and_column():
    x = torch.randn(40, 300)
    x[17, 5] = float("nan")
    out = pdist(x, x, "euclidean")
    bad = torch.isnan(out)
    assert bad[17].all() and bad[:, 17].all()
    bad[17], bad[:, 17] = False, False
    assert not bad.any()


def test_float64_path_is_symmetric_and_exact_enough():
    x = torch.randn(77, 130, dtype=torch.float64)
    out = pdist(x, x, "euclidean")
    assert torch.equal(out, out.T)
    torch.testing.assert_close(out, _ref(x, "euclidean"), atol=1e-9, rtol=1e-9)
