"""kreciprocal_rerank against a straightforward dense numpy implementation of the paper's steps."""
import numpy as np
import pytest
import torch

from ssml_fast.ops import kreciprocal_rerank, topk_neighbors

from conftest import requires_cuda


def sqdist(x):
    x = np.asarray(x, dtype=np.float64)
    sq = (x * x).sum(1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    np.fill_diagonal(d, 0)
    return d


def reference(d, q, k1, k2, lam):
    """Zhong et al. 2017 as the widely used numpy code runs it, dense, on a squared-distance matrix d (N, N).

    Deviations from that code, both deterministic choices it leaves open: ties in the neighbour order go to
    the lower index (stable argsort), and a row whose max distance is 0 stays 0 instead of NaN.
    """
    n = d.shape[0]
    mx = d.max(1, keepdims=True)
    dist = np.where(mx > 0, d / np.where(mx > 0, mx, 1), 0)  # each row divided by its max
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i, length):  # j among i's first `length` neighbours, i among j's
        return [j for j in rank[i, :length] if i in rank[j, :length]]

    full = min(k1 + 1, n)
    half = min(int(np.around(k1 / 2)) + 1, n)
    R = [reciprocal(i, full) for i in range(n)]
    H = [reciprocal(i, half) for i in range(n)]
    V = np.zeros((n, n))
    for i in range(n):
        expanded = set(R[i])
        for c in R[i]:
            if len(set(H[c]) & set(R[i])) > 2.0 / 3 * len(H[c]):
                expanded |= set(H[c])
        members = sorted(expanded)
        weight = np.exp(-dist[i, members])
        V[i, members] = weight / weight.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(0) for i in range(n)])
    jaccard = np.empty((q, n))
    for i in range(q):
        m = np.minimum(V[i][None, :], V).sum(1)
        jaccard[i] = 1 - m / (2 - m)
    return ((1 - lam) * jaccard + lam * dist[:q])[:, q:]


def feature_reference(x, q, k1, k2, lam):
    """reference() on the features' distances, with the feature entry point's rule for exact copies: a query and
    a gallery row that are identical are at re-ranked distance 0 (only the index tie rule would separate their
    neighbourhoods otherwise; collapsed features re-rank to all zeros)."""
    d = sqdist(x)
    out = reference(d, q, k1, k2, lam)
    out[d[:q, q:] == 0] = 0
    return out


def features(n, d, seed, integer=False):
    rng = np.random.default_rng(seed)
    if integer:  # small integers: every distance exact in float32, many exact ties
        return rng.integers(-2, 3, size=(n, d)).astype(np.float64)
    return rng.standard_normal((n, d))


def run(x, q, k1, k2, lam, dtype=torch.float64, device="cpu"):
    t = torch.as_tensor(x, dtype=dtype, device=device)
    out = kreciprocal_rerank(t[:q], t[q:], k1=k1, k2=k2, lambda_value=lam)
    assert out.dtype == torch.float32 and out.shape == (q, len(x) - q) and out.device == t.device
    return out.cpu().double().numpy()


@pytest.mark.parametrize("n,q,k1,k2,lam", [
    (50, 10, 20, 6, 0.3), (50, 25, 5, 3, 0.3), (50, 1, 20, 1, 0.3), (50, 49, 3, 2, 0.0), (51, 7, 1, 1, 1.0),
    (37, 5, 4, 4, 0.5), (31, 6, 36, 6, 0.3), (23, 4, 22, 22, 0.3), (2, 1, 1, 1, 0.3), (29, 9, 7, 5, 0.7),
    (120, 20, 60, 6, 0.3), (60, 10, 100, 9, 0.3),  # long lists: membership by binary search
])
def test_small(device, n, q, k1, k2, lam):
    x = features(n, 8, seed=n + q + k1)
    np.testing.assert_allclose(run(x, q, k1, k2, lam, device=device), feature_reference(x, q, k1, k2, lam),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("n,q", [(500, 100), (2000, 100)])
def test_medium(n, q):
    x = features(n, 16, seed=n)
    np.testing.assert_allclose(run(x, q, 20, 6, 0.3), feature_reference(x, q, 20, 6, 0.3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_ties(device, seed, dtype):
    """Integer features in few dimensions: duplicates and equal distances all over; the index rule decides."""
    x = features(60, 3, seed=seed, integer=True)
    for k1, k2 in ((20, 6), (5, 2), (10, 1)):
        np.testing.assert_allclose(run(x, 12, k1, k2, 0.3, dtype=dtype, device=device),
                                   feature_reference(x, 12, k1, k2, 0.3), atol=1e-5, rtol=0)


def test_all_identical():
    x = np.ones((9, 4))
    got = run(x, 3, 4, 2, 0.3)
    np.testing.assert_allclose(got, feature_reference(x, 3, 4, 2, 0.3), atol=1e-6, rtol=0)


def test_float32_and_half_inputs():
    x = features(80, 16, seed=1)
    want = feature_reference(np.float32(x), 15, 20, 6, 0.3)
    np.testing.assert_allclose(run(x, 15, 20, 6, 0.3, dtype=torch.float32), want, atol=1e-5, rtol=0)
    xi = features(80, 4, seed=2, integer=True)  # exact in half precision too
    for dtype in (torch.float16, torch.bfloat16):
        np.testing.assert_allclose(run(xi, 15, 20, 6, 0.3, dtype=dtype), feature_reference(xi, 15, 20, 6, 0.3),
                                   atol=1e-5, rtol=0)


def sorted_lists(d, K):
    """Each row's K nearest by (distance, index): the top-K input."""
    order = np.argsort(d, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(d, order, 1), order


def truncated(d, K):
    """The matrix the top-K entry point works on: pairs missing from row i's list at its largest listed distance."""
    dist, idx = sorted_lists(d, K)
    out = np.repeat(dist[:, -1:], d.shape[0], axis=1)
    np.put_along_axis(out, idx, dist, 1)
    return out


@pytest.mark.parametrize("n,q,k1,k2,K", [(50, 10, 20, 6, 25), (120, 30, 10, 3, 14), (300, 40, 20, 6, 30),
                                         (40, 8, 6, 1, 9), (2000, 100, 20, 6, 40)])
def test_topk_lists(n, q, k1, k2, K):
    x = features(n, 16, seed=K)
    d = sqdist(x)
    dist, idx = sorted_lists(d, K)
    got = kreciprocal_rerank((torch.from_numpy(dist), torch.from_numpy(idx)), num_query=q, k1=k1, k2=k2)
    np.testing.assert_allclose(got.double().numpy(), reference(truncated(d, K), q, k1, k2, 0.3), atol=1e-5, rtol=0)


def test_topk_full_lists_equal_features(device):
    """K = N lists (every pair, index ties) give exactly the feature-based numbers."""
    x = features(70, 8, seed=3, integer=True)
    dist, idx = sorted_lists(sqdist(x), 70)
    got = kreciprocal_rerank((torch.from_numpy(dist).to(device), torch.from_numpy(idx).to(device)), num_query=20)
    np.testing.assert_allclose(got.cpu().double().numpy(), run(x, 20, 20, 6, 0.3, device=device), atol=1e-6, rtol=0)


def test_topk_neighbors_helper():
    x = torch.randn(300, 12, generator=torch.Generator().manual_seed(0))
    d = sqdist(x.double().numpy())
    for use_faiss in (False, True):
        dist, idx = topk_neighbors(x, 25, use_faiss=use_faiss)
        np.testing.assert_array_equal(idx.numpy(), np.argsort(d, axis=1, kind="stable")[:, :25])
        np.testing.assert_allclose(dist.numpy(), np.sort(d, axis=1)[:, :25], atol=1e-4)
    got = kreciprocal_rerank(topk_neighbors(x, 300), num_query=50)
    np.testing.assert_allclose(got.numpy(), kreciprocal_rerank(x[:50], x[50:]).numpy(), atol=2e-5)


def test_rerank_changes_ranking_toward_reciprocal_neighbours():
    """Two tight clusters with one ambiguous query: re-ranking puts the query's cluster first."""
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, (30, 4)) + np.array([1.0, 0, 0, 0])
    b = rng.normal(0, 0.1, (30, 4)) + np.array([-1.0, 0, 0, 0])
    x = np.concatenate([a[:1], a[1:], b])
    out = run(x, 1, 20, 6, 0.3)[0]
    assert out[:29].max() < out[29:].min()


def test_opcheck():
    x = torch.randn(40, 6)
    torch.library.opcheck(torch.ops.ssml_fast.kreciprocal_rerank.default, (x[:8], x[8:], 10, 3, 0.3))
    dist, idx = topk_neighbors(x, 12, use_faiss=False)
    torch.library.opcheck(torch.ops.ssml_fast.kreciprocal_rerank_topk.default, (dist, idx, 8, 10, 3, 0.3))


def test_empty_sides():
    x = torch.randn(10, 4)
    assert kreciprocal_rerank(x[:0], x).shape == (0, 10)
    assert kreciprocal_rerank(x, x[:0]).shape == (10, 0)


def test_bad_input():
    x = torch.randn(30, 5)
    q, g = x[:5], x[5:]
    with pytest.raises(ValueError, match="k1 must be >= 1"):
        kreciprocal_rerank(q, g, k1=0, k2=1)
    with pytest.raises(ValueError, match="k2 must be >= 1"):
        kreciprocal_rerank(q, g, k2=0)
    with pytest.raises(ValueError, match="k2 must be <= k1"):
        kreciprocal_rerank(q, g, k1=5, k2=6)
    with pytest.raises(TypeError, match="k1 must be an int"):
        kreciprocal_rerank(q, g, k1=5.0)
    with pytest.raises(ValueError, match="lambda_value"):
        kreciprocal_rerank(q, g, lambda_value=1.5)
    with pytest.raises(ValueError, match="mode"):
        kreciprocal_rerank(q, g, mode="fast")
    with pytest.raises(ValueError, match="dimension"):
        kreciprocal_rerank(q, torch.randn(25, 4))
    with pytest.raises(ValueError, match="2-D"):
        kreciprocal_rerank(q[0], g)
    with pytest.raises(ValueError, match="gallery features are required"):
        kreciprocal_rerank(q)
    bad = g.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="gallery contains NaN"):
        kreciprocal_rerank(q, bad)
    with pytest.raises(TypeError, match="floating"):
        kreciprocal_rerank(q.long(), g.long())
    dist, idx = topk_neighbors(x, 21, use_faiss=False)
    with pytest.raises(ValueError, match="num_query"):
        kreciprocal_rerank((dist, idx))
    with pytest.raises(ValueError, match="needs 21"):
        kreciprocal_rerank((dist[:, :10], idx[:, :10]), num_query=5)
    with pytest.raises(ValueError, match="non-decreasing"):
        kreciprocal_rerank((dist.flip(1), idx.flip(1)), num_query=5)
    with pytest.raises(ValueError, match="shape"):
        kreciprocal_rerank((dist, idx[:, :5]), num_query=5)
    with pytest.raises(ValueError, match="exceeds"):
        kreciprocal_rerank((dist, idx), num_query=31)
    bad_idx = idx.clone()
    bad_idx[4, 3] = 30
    with pytest.raises(ValueError, match="outside"):
        kreciprocal_rerank((dist, bad_idx), num_query=5)
    bad_idx[4, 3] = bad_idx[4, 2]
    with pytest.raises(ValueError, match="twice"):
        kreciprocal_rerank((dist, bad_idx), num_query=5)
    bad_dist = dist.clone()
    bad_dist[0, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        kreciprocal_rerank((bad_dist, idx), num_query=5)
    with pytest.raises(ValueError, match="k2 must be in"):  # the op boundary checks too
        torch.ops.ssml_fast.kreciprocal_rerank(q, g, 5, 6, 0.3)


@requires_cuda
def test_cuda_matches_cpu():
    x = torch.randn(300, 32, generator=torch.Generator().manual_seed(0))
    cpu = kreciprocal_rerank(x[:40], x[40:])
    gpu = kreciprocal_rerank(x[:40].cuda(), x[40:].cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-6, rtol=0)
