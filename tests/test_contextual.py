"""contextual_similarity (STML, thesis eqs 3.15-3.20) against a plain reference written from the formulas."""
import pytest
import torch

from ssml_fast.ops import ContextualSimilarity, contextual_similarity

from conftest import requires_cuda
from reference.contextual import dyadic, reference  # noqa: F401  (test_stml imports reference from here)


def assert_matches(emb, k, sigma=3.0, ids=None, atol=1e-5):
    got = contextual_similarity(emb, k, sigma, ids=ids, return_parts=True)
    want = reference(emb, k, sigma, ids)
    for name, g, r in zip(("w", "w_p", "w_c"), got, want):
        assert g.dtype == torch.float32 and g.device == emb.device
        torch.testing.assert_close(g.cpu().double(), r, atol=atol, rtol=0, msg=lambda s: f"{name}: {s}")
    return got


@pytest.mark.parametrize("n,k", [(1, 1), (2, 1), (2, 2), (7, 1), (7, 3), (13, 5), (13, 13), (40, 10), (40, 20),
                                 (41, 41), (64, 7), (97, 12)])
def test_random_float64(device, n, k):
    emb = torch.randn(n, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(n * 100 + k)).to(device)
    assert_matches(emb, k)


@pytest.mark.parametrize("n,k", [(30, 4), (31, 10), (240, 10)])
def test_random_float32(device, n, k):
    emb = torch.randn(n, 64, generator=torch.Generator().manual_seed(n + k)).to(device)
    assert_matches(emb, k)


@pytest.mark.parametrize("sigma", [0.1, 1.0, 3.0, 10.0])
def test_sigma(device, sigma):
    emb = torch.randn(25, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(device)
    assert_matches(emb, 6, sigma)


@pytest.mark.parametrize("levels", [None, 5, 12])
@pytest.mark.parametrize("k", [1, 2, 5, 8, 33])
def test_exact_ties(device, levels, k):
    """Duplicate rows and equal distances everywhere: the order falls to the index rule."""
    emb = dyadic(33, levels=levels, seed=k).to(device)
    assert_matches(emb, k)


def test_duplicate_rows_float64(device):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(10, 6, dtype=torch.float64, generator=g)
    emb = base[torch.randint(0, 10, (29,), generator=g)].to(device)
    for k in (1, 3, 4, 9, 29):
        assert_matches(emb, k)


@pytest.mark.parametrize("scale", [1.0, 2.0 ** 70])
def test_duplicate_rows_float32(device, scale):
    """float32 rows with copies (one with its zeros negated: equal in value) and rows of equal norm that are not
    copies (permutations) come out as the reference says; scale 2^70 takes the rescaled Gram. On AVX2 CPUs the
    copies are found from the Gram, in tests/test_cpu_fallbacks.py by hashing. (With our Gram, copies tie
    exactly even unmerged, so this checks the results, not which search ran.)"""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(8, 16, generator=g)
    base[:, :3] = 0.0
    rows = [base[i] for i in range(8)]
    rows += [base[1].clone(), base[1].clone(), base[2].clone()]  # copies
    rows[-2][:3] = -0.0                                           # its zeros negated: still equal in value
    rows += [base[3][torch.randperm(16, generator=g)], base[3].flip(0)]  # same norm, not copies
    rows += [base[4].clone()]
    emb = (torch.stack(rows) * scale).to(device)
    for k in (1, 2, 3, 5, 14):
        assert_matches(emb, k)


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("k", [1, 2, 3, 6, 10])
def test_ids_ranked_first(device, views, k):
    """Rows sharing a dataset index (augmented views) come right after the row itself."""
    g = torch.Generator().manual_seed(views * 10 + k)
    images = 9
    ids = torch.arange(images).repeat(views)[torch.randperm(images * views, generator=g)]
    emb = torch.randn(images * views, 12, dtype=torch.float64, generator=g)
    got = assert_matches(emb.to(device), k, ids=ids.to(device))
    # ids with float32 exact ties too
    assert_matches(dyadic(images * views, levels=4, seed=k).to(device), k, ids=ids.to(device))
    # and ids where some value appears once only (odd group sizes)
    odd_ids = ids.clone()
    odd_ids[0] = 100
    assert_matches(emb.to(device), k, ids=odd_ids.to(device))
    assert got.w_c.shape == (images * views, images * views)


def test_views_are_neighbours():
    """With ids, a view's partner has w_c > 0 however far apart the two embeddings are."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(20, 8, generator=g)
    ids = torch.arange(10).repeat(2)
    parts = contextual_similarity(emb, 4, ids=ids, return_parts=True)
    for i in range(20):
        assert parts.w_c[i, (i + 10) % 20] > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes(device, dtype):
    emb = dyadic(24, levels=10, seed=1).to(device=device, dtype=dtype)  # exact in every dtype
    w = contextual_similarity(emb, 5)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w.cpu().double(), reference(emb.float(), 5)[0], atol=1e-5, rtol=0)


def test_properties(device):
    emb = torch.randn(50, 16, generator=torch.Generator().manual_seed(2)).to(device)
    w, w_p, w_c = contextual_similarity(emb, 10, return_parts=True)
    for m in (w, w_p, w_c):
        assert torch.equal(m, m.T)  # exactly symmetric
        assert m.min() >= 0 and m.max() <= 1 + 1e-6
    assert torch.equal(torch.diagonal(w_p), torch.ones(50, device=device))
    assert torch.equal(w, contextual_similarity(emb, 10))
    assert isinstance(contextual_similarity(emb, 10, return_parts=True), ContextualSimilarity)


def test_scale_invariant_and_unnormalised_input():
    emb = torch.randn(30, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(contextual_similarity(emb, 6), contextual_similarity(emb * 37.5, 6), atol=1e-6, rtol=0)


def test_k_equals_n_is_all_ones_context():
    emb = torch.randn(11, 5, generator=torch.Generator().manual_seed(4))
    _, _, w_c = contextual_similarity(emb, 11, return_parts=True)
    torch.testing.assert_close(w_c, torch.ones(11, 11))


def test_k1_is_identity_context():
    emb = torch.randn(11, 5, generator=torch.Generator().manual_seed(4))
    _, _, w_c = contextual_similarity(emb, 1, return_parts=True)
    torch.testing.assert_close(w_c, torch.eye(11))


def test_zero_row(device):
    """A zero row stays zero after normalisation (F.normalize's eps) and is at distance 1 from every unit row."""
    emb = dyadic(9, seed=6)
    emb[3] = 0
    for k in (1, 3, 9):
        assert_matches(emb.to(device), k)


def test_large_n_sparse_and_dense_expansion():
    """n = 600: k = 10 takes the sparse expansion, k = 500 the GEMM one; both against a vectorised reference."""
    emb = torch.randn(600, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    for k in (10, 500):
        got = contextual_similarity(emb, k, return_parts=True)
        t = torch.nn.functional.normalize(emb)
        d2 = torch.cdist(t, t) ** 2
        d2.fill_diagonal_(-1)  # self first
        nn = torch.from_numpy(d2.numpy().argsort(axis=1, kind="stable")[:, :k])
        inn = torch.zeros(600, 600, dtype=torch.bool).scatter_(1, nn, True)
        v = (inn & inn.T).double()
        w_tilde = v * (v @ v.T) / v.sum(1, keepdim=True)
        m = max(1, round(k / 2))
        w_hat = w_tilde[nn[:, :m]].mean(1)
        torch.testing.assert_close(got.w_c.double(), (w_hat + w_hat.T) / 2, atol=1e-5, rtol=0)


def test_opcheck():
    emb = torch.randn(17, 6)
    ids = torch.arange(17) % 8
    torch.library.opcheck(torch.ops.ssml_fast.contextual_similarity.default, (emb, 5, 3.0, ids))
    torch.library.opcheck(torch.ops.ssml_fast.contextual_similarity.default, (emb.double(), 1, 0.5, None))


def test_compile():
    emb = torch.randn(20, 6)
    fn = torch.compile(lambda x: contextual_similarity(x, 4) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(fn(emb), contextual_similarity(emb, 4) * 2)


def test_bad_input():
    emb = torch.randn(10, 4)
    with pytest.raises(ValueError, match="k must be in"):
        contextual_similarity(emb, 0)
    with pytest.raises(ValueError, match="k must be in"):
        contextual_similarity(emb, 11)
    with pytest.raises(TypeError, match="k must be an int"):
        contextual_similarity(emb, 2.0)
    with pytest.raises(ValueError, match="sigma"):
        contextual_similarity(emb, 3, sigma=0)
    with pytest.raises(ValueError, match="sigma"):
        contextual_similarity(emb, 3, sigma=-1.0)
    with pytest.raises(ValueError, match="sigma"):
        contextual_similarity(emb, 3, sigma=float("nan"))
    bad = emb.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        contextual_similarity(bad, 3)
    with pytest.raises(ValueError, match="2-D"):
        contextual_similarity(emb[0], 1)
    with pytest.raises(TypeError, match="floating"):
        contextual_similarity(torch.ones(10, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="ids has 9 entries"):
        contextual_similarity(emb, 3, ids=torch.arange(9))
    with pytest.raises(TypeError, match="ids must be an integer"):
        contextual_similarity(emb, 3, ids=torch.zeros(10))
    with pytest.raises(ValueError, match="at least one row"):
        contextual_similarity(torch.randn(0, 4), 1)
    # the op boundary checks too
    with pytest.raises(ValueError, match="k must be in"):
        torch.ops.ssml_fast.contextual_similarity(emb, 0, 3.0, None)
    with pytest.raises(ValueError, match="sigma"):
        torch.ops.ssml_fast.contextual_similarity(emb, 2, 0.0, None)


@requires_cuda
def test_cuda_matches_cpu():
    for n, k in ((240, 10), (33, 33), (100, 1), (257, 64)):
        emb = torch.randn(n, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
        ids = torch.arange(n) % (n // 2 + 1)
        for i in (None, ids):
            cpu = contextual_similarity(emb, k, ids=i, return_parts=True)
            gpu = contextual_similarity(emb.cuda(), k, ids=None if i is None else i.cuda(), return_parts=True)
            for a, b in zip(cpu, gpu):
                torch.testing.assert_close(b.cpu(), a, atol=1e-6, rtol=0)
    emb = dyadic(64, levels=9).cuda()
    torch.testing.assert_close(contextual_similarity(emb, 7).cpu(), contextual_similarity(emb.cpu(), 7), atol=1e-6,
                               rtol=0)


@pytest.mark.parametrize("k", [10, 64])
def test_n_4096(k):
    """The issue's largest size, against the vectorised reference (set sizes as a float32 GEMM: exact counts)."""
    n = 4096
    emb = torch.randn(n, 24, generator=torch.Generator().manual_seed(11))
    got = contextual_similarity(emb, k, return_parts=True)
    t = torch.nn.functional.normalize(emb.double())
    d2 = (t.pow(2).sum(1, keepdim=True) + t.pow(2).sum(1) - 2 * t @ t.T).clamp_min(0)
    d2.fill_diagonal_(-1)  # self first
    nn = torch.from_numpy(d2.numpy().argsort(axis=1, kind="stable")[:, :k])
    inn = torch.zeros(n, n, dtype=torch.bool).scatter_(1, nn, True)
    v = (inn & inn.T).float()
    w_tilde = (v * (v @ v.T)).double() / v.double().sum(1, keepdim=True)
    w_hat = w_tilde[nn[:, : max(1, round(k / 2))]].mean(1)
    torch.testing.assert_close(got.w_c.double(), (w_hat + w_hat.T) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.w_p.double(), torch.exp(-d2.clamp_min(0) / 3.0), atol=1e-5, rtol=0)
