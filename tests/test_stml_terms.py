"""STML's fused loss-term ops (row_relative + backward, relaxed_contrastive_rows, self_distillation_kl_rows)
against plain PyTorch references, and the losses built on them (RelaxedContrastiveLoss.from_distances,
SelfDistillationKL.from_distances, STMLLoss with a memory)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from ssml_fast.losses import RelaxedContrastiveLoss, SelfDistillationKL, STMLLoss

OPS = torch.ops.ssml_fast
INF = float("inf")
NAN = float("nan")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ---------------------------------------------------------------------------------------------------------
# Plain references. (n, c) matrices, c >= n; column i of row i is the self pair.
# ---------------------------------------------------------------------------------------------------------
def self_mask(d):
    return torch.eye(d.shape[0], d.shape[1], dtype=torch.bool, device=d.device)


def ref_relative(d, eps=1e-12):
    """rel_ij = d_ij / max(mean_i, eps), mean_i over all c columns with the self pair as 0; rel_ii = 0."""
    m = self_mask(d)
    d0 = torch.where(m, torch.zeros_like(d), d)
    inv = 1 / (d0.sum(1) / d.shape[1]).clamp_min(eps)
    return torch.where(m, torch.zeros_like(d), d * inv[:, None]), inv


def ref_rc(d, w, delta, scale=1.0):
    """scale * sum_i sum_{j != i} w d^2 + (1 - w) relu(delta - d)^2."""
    m = self_mask(d)
    d = d.masked_fill(m, 0.0)  # first, so a NaN self pair has no path into the gradient (0 * NaN)
    pair = w * d ** 2 + (1 - w) * torch.relu(delta - d) ** 2
    return scale * torch.where(m, torch.zeros_like(d), pair).sum()


def ref_kl(df, dg, T, exclude_self, scale=1.0):
    """scale * sum_i KL(q_i || p_i), p = softmax(-df / T), q = softmax(-dg / T) (column i dropped if asked)."""
    lf, lg = -df / T, -dg / T
    if exclude_self:
        lf = lf.masked_fill(self_mask(df), -INF)
        lg = lg.masked_fill(self_mask(dg), -INF)
    log_p = torch.log_softmax(lf, 1)
    log_q = torch.log_softmax(lg, 1)
    q = log_q.exp()
    return scale * torch.where(q == 0, torch.zeros_like(q), q * (log_q - log_p)).sum()


def ref_grad(fn, x, *args):
    """(value, d value / d x) of a reference, by autograd, in x's dtype."""
    x = x.detach().clone().requires_grad_(True)
    v = fn(x, *args)
    (g,) = torch.autograd.grad(v, x)
    return v.detach(), g


def tol(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)


def rand_dist(n, c, dtype=torch.float64, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, generator=g, dtype=torch.float64) * scale).to(dtype)


SHAPES = [(1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3), (4, 9), (7, 7), (5, 13), (16, 40)]
DTYPES = [torch.float64, torch.float32]


# ---------------------------------------------------------------------------------------------------------
# 1. values and gradients against the references
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", SHAPES)
def test_row_relative_and_backward(n, c, dtype):
    d = rand_dist(n, c, dtype, seed=n * 100 + c)
    rel, inv = OPS.row_relative(d, 1e-12)
    want_rel, want_inv = ref_relative(d.double())
    assert rel.dtype == dtype and rel.shape == (n, c) and inv.shape == (n,)
    torch.testing.assert_close(rel, want_rel.to(dtype), **tol(dtype))
    torch.testing.assert_close(inv, want_inv.to(dtype), **tol(dtype))
    assert (rel.diagonal() == 0).all()
    # backward against autograd through the reference, with a random upstream
    up = torch.randn(n, c, generator=torch.Generator().manual_seed(c), dtype=torch.float64)
    x = d.double().requires_grad_(True)
    (want,) = torch.autograd.grad(ref_relative(x)[0], x, up)
    got = OPS.row_relative_backward(up.to(dtype), rel, inv)
    torch.testing.assert_close(got, want.to(dtype), **tol(dtype))
    assert (got.diagonal() == 0).all()


def ref_rc_pull_from(d, w, delta, scale, push_cols):
    """ref_rc with the push part dropped in columns j >= push_cols."""
    m = self_mask(d)
    d = d.masked_fill(m, 0.0)
    push = (torch.arange(d.shape[1]) < push_cols).to(d.dtype)
    pair = w * d ** 2 + push * (1 - w) * torch.relu(delta - d) ** 2
    return scale * torch.where(m, torch.zeros_like(d), pair).sum()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", [(1, 3), (3, 3), (4, 9), (5, 13), (16, 40)])
def test_relaxed_contrastive_rows_pull_only_columns(n, c, dtype):
    """push_cols: columns from push_cols on keep only w d^2 (push_cols = c: every column pushes, as -1;
    push_cols = 0 drops every push part, the self pairs' included, which carry nothing anyway)."""
    d = rand_dist(n, c, dtype, seed=3 * n + c)
    w = torch.rand(n, c, generator=torch.Generator().manual_seed(n), dtype=torch.float64).to(dtype)
    for push_cols in (0, n, (n + c) // 2, c):
        v, g = OPS.relaxed_contrastive_rows(d, w, 0.8, 0.5, push_cols)
        want_v, want_g = ref_grad(ref_rc_pull_from, d.double(), w.double(), 0.8, 0.5, push_cols)
        torch.testing.assert_close(v, want_v.to(dtype), **tol(dtype))
        torch.testing.assert_close(g, want_g.to(dtype), **tol(dtype))
    torch.testing.assert_close(OPS.relaxed_contrastive_rows(d, w, 0.8, 0.5, c),
                               OPS.relaxed_contrastive_rows(d, w, 0.8, 0.5, -1), rtol=0, atol=0)
    for bad in (-2, c + 1):
        with pytest.raises(ValueError, match="push_cols must be -1 or in"):
            OPS.relaxed_contrastive_rows(d, w, 0.8, 0.5, bad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", SHAPES)
@pytest.mark.parametrize("delta,scale", [(1.0, 1.0), (0.7, 0.25), (0.0, 3.0)])
def test_relaxed_contrastive_rows(n, c, dtype, delta, scale):
    d = rand_dist(n, c, dtype, seed=n + 7 * c)
    w = torch.rand(n, c, generator=torch.Generator().manual_seed(c), dtype=torch.float64).to(dtype)
    w[0, 0] = 0.5  # the self pair's weight is ignored
    v, g = OPS.relaxed_contrastive_rows(d, w, delta, scale)
    want_v, want_g = ref_grad(ref_rc, d.double(), w.double(), delta, scale)
    assert v.shape == () and v.dtype == dtype and g.shape == (n, c)
    torch.testing.assert_close(v, want_v.to(dtype), **tol(dtype))
    torch.testing.assert_close(g, want_g.to(dtype), **tol(dtype))
    assert (g.diagonal() == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", SHAPES)
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("T,scale", [(1.0, 1.0), (0.5, 0.3), (2.0, 4.0)])
def test_self_distillation_kl_rows(n, c, dtype, exclude_self, T, scale):
    if exclude_self and c < 2:
        pytest.skip("exclude_self needs c >= 2 (see test_kl_exclude_self_single_column)")
    df = rand_dist(n, c, dtype, seed=3 * n + c)
    dg = rand_dist(n, c, dtype, seed=5 * n + 11 * c)
    v, g = OPS.self_distillation_kl_rows(df, dg, T, exclude_self, scale)
    want_v, want_g = ref_grad(ref_kl, df.double(), dg.double(), T, exclude_self, scale)
    assert v.shape == () and v.dtype == dtype and g.shape == (n, c)
    torch.testing.assert_close(v, want_v.to(dtype), **tol(dtype))
    torch.testing.assert_close(g, want_g.to(dtype), **tol(dtype))
    # the gradient is scale * (q - p) / T
    lf, lg = -df.double() / T, -dg.double() / T
    if exclude_self:
        lf, lg = lf.masked_fill(self_mask(df), -INF), lg.masked_fill(self_mask(dg), -INF)
    closed = scale * (torch.softmax(lg, 1) - torch.softmax(lf, 1)) / T
    torch.testing.assert_close(g, closed.to(dtype), **tol(dtype))
    if exclude_self:
        assert (g.diagonal() == 0).all()


def test_kl_exclude_self_single_column():
    """c = 1 with exclude_self: no column left. Kernel vs reference, recorded as they are (the losses never
    call it there: they need c >= 3)."""
    df, dg = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[0.7]], dtype=torch.float64)
    v, g = OPS.self_distillation_kl_rows(df, dg, 1.0, True, 1.0)
    want = ref_kl(df, dg, 1.0, True)
    torch.testing.assert_close(v, want, equal_nan=True)


def test_kl_identical_rows_zero_and_noncontiguous_inputs():
    d = rand_dist(6, 10, seed=4)
    v, g = OPS.self_distillation_kl_rows(d, d.clone(), 1.0, True, 1.0)
    assert abs(float(v)) < 1e-14 and g.abs().max() < 1e-15
    # transposed (non-contiguous) views give the same result as contiguous copies
    base = rand_dist(10, 6, seed=5)
    dt, w = base.t(), rand_dist(10, 6, seed=6, scale=1.0).t()
    assert not dt.is_contiguous()
    for out, want in ((OPS.row_relative(dt, 1e-12), OPS.row_relative(dt.contiguous(), 1e-12)),
                      (OPS.relaxed_contrastive_rows(dt, w, 1.0, 1.0),
                       OPS.relaxed_contrastive_rows(dt.contiguous(), w.contiguous(), 1.0, 1.0)),
                      (OPS.self_distillation_kl_rows(dt, w, 1.0, False, 1.0),
                       OPS.self_distillation_kl_rows(dt.contiguous(), w.contiguous(), 1.0, False, 1.0))):
        for a, b in zip(out, want):
            assert torch.equal(a, b)
    rel, inv = OPS.row_relative(dt.contiguous(), 1e-12)
    assert torch.equal(OPS.row_relative_backward(w, rel, inv), OPS.row_relative_backward(w.contiguous(), rel, inv))


def test_row_relative_eps_path():
    """A row whose mean is 0 (all zeros off the self pair) is divided by eps: rel 0, inv 1 / eps."""
    d = rand_dist(3, 5, seed=9)
    d[1] = 0.0
    d[2] = 0.0
    d[2, 2] = 5.0  # the self pair does not count
    for eps in (1e-12, 1e-3):
        rel, inv = OPS.row_relative(d, eps)
        want_rel, want_inv = ref_relative(d, eps)
        torch.testing.assert_close(rel, want_rel, rtol=1e-12, atol=0)
        torch.testing.assert_close(inv, want_inv, rtol=1e-12, atol=0)
        assert inv[1] == 1 / eps and inv[2] == 1 / eps and (rel[1:] == 0).all()
        up = torch.randn(3, 5, dtype=torch.float64)
        x = d.clone().requires_grad_(True)
        (want,) = torch.autograd.grad(ref_relative(x, eps)[0], x, up)
        torch.testing.assert_close(OPS.row_relative_backward(up, rel, inv), want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# 2. hypothesis sweep: shapes and value patterns (ties, zeros, all-equal rows, eps path)
# ---------------------------------------------------------------------------------------------------------
@st.composite
def matrices(draw):
    n = draw(st.integers(1, 6))
    c = n + draw(st.integers(0, 5))
    pattern = draw(st.sampled_from(["random", "ties", "zeros", "equal_rows", "zero_rows"]))
    seed = draw(st.integers(0, 2 ** 16))
    gen = torch.Generator().manual_seed(seed)
    if pattern == "random":
        d = torch.rand(n, c, generator=gen, dtype=torch.float64) * 3
    elif pattern == "ties":
        d = torch.randint(0, 3, (n, c), generator=gen).double() * 0.5
    elif pattern == "zeros":
        d = torch.rand(n, c, generator=gen, dtype=torch.float64) * (torch.rand(n, c, generator=gen) < 0.5)
    elif pattern == "equal_rows":
        d = torch.rand(n, 1, generator=gen, dtype=torch.float64).expand(n, c).clone()
    else:  # some rows all zero: mean 0, the eps path
        d = torch.rand(n, c, generator=gen, dtype=torch.float64)
        d[torch.rand(n, generator=gen) < 0.5] = 0.0
    w = torch.rand(n, c, generator=gen, dtype=torch.float64)
    if draw(st.booleans()):
        w = (w > 0.5).double()  # hard 0 / 1 targets
    dg = torch.randint(0, 3, (n, c), generator=gen).double() if pattern == "ties" else \
        torch.rand(n, c, generator=gen, dtype=torch.float64) * 2
    return d, w, dg


@settings(max_examples=40, deadline=None)
@given(m=matrices(), delta=st.sampled_from([0.0, 0.5, 1.0]), T=st.sampled_from([0.5, 1.0]),
       exclude_self=st.booleans())
def test_hypothesis_all_ops(m, delta, T, exclude_self):
    d, w, dg = m
    n, c = d.shape
    rel, inv = OPS.row_relative(d, 1e-12)
    want_rel, want_inv = ref_relative(d)
    torch.testing.assert_close(rel, want_rel, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inv, want_inv, rtol=1e-12, atol=0)
    up = torch.randn(n, c, dtype=torch.float64)
    x = d.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(ref_relative(x)[0], x, up)
    # gradients scale as inv (1e12 on the eps path): relative tolerance
    torch.testing.assert_close(OPS.row_relative_backward(up, rel, inv), want, rtol=1e-9, atol=1e-9)

    v, g = OPS.relaxed_contrastive_rows(rel, w, delta, 0.5)
    want_v, want_g = ref_grad(ref_rc, rel, w, delta, 0.5)
    torch.testing.assert_close(v, want_v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, want_g, rtol=1e-12, atol=1e-12)

    if exclude_self and c < 2:
        return
    v, g = OPS.self_distillation_kl_rows(rel, dg, T, exclude_self, 1.0 / n)
    want_v, want_g = ref_grad(ref_kl, rel, dg, T, exclude_self, 1.0 / n)
    torch.testing.assert_close(v, want_v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, want_g, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# 3. opcheck (CPU; the ops have no autograd of their own, so no input requires grad)
# ---------------------------------------------------------------------------------------------------------
def _opcheck_samples():
    out = []
    for dtype, (n, c) in ((torch.float64, (3, 3)), (torch.float32, (4, 7)), (torch.float32, (1, 2))):
        d = rand_dist(n, c, dtype, seed=c)
        w = rand_dist(n, c, dtype, seed=c + 1, scale=1.0)
        rel, inv = OPS.row_relative(d, 1e-12)
        out += [(OPS.row_relative.default, (d, 1e-12)),
                (OPS.row_relative_backward.default, (w, rel, inv)),
                (OPS.relaxed_contrastive_rows.default, (d, w, 1.0, 0.5)),
                (OPS.relaxed_contrastive_rows.default, (d, w, 1.0, 0.5, n)),
                (OPS.self_distillation_kl_rows.default, (d, w * 2, 1.0, c >= 2, 0.25))]
    return out


@pytest.mark.parametrize("i", range(15))
def test_opcheck(i):
    op, args = _opcheck_samples()[i]
    torch.library.opcheck(op, args)


# ---------------------------------------------------------------------------------------------------------
# 4. NaN / inf: compared with the reference's behaviour
# ---------------------------------------------------------------------------------------------------------
def _nan_inf_cases():
    base = rand_dist(4, 7, seed=21)
    cases = {}
    x = base.clone(); x[1, 4] = NAN; cases["nan_offdiag"] = x
    x = base.clone(); x[2, 2] = NAN; cases["nan_self_pair"] = x
    x = base.clone(); x[0, 5] = INF; cases["inf_offdiag"] = x
    x = base.clone(); x[3, 3] = INF; cases["inf_self_pair"] = x
    return cases


@pytest.mark.parametrize("case", list(_nan_inf_cases()))
def test_nonfinite_row_relative_matches_reference(case):
    d = _nan_inf_cases()[case]
    rel, inv = OPS.row_relative(d, 1e-12)
    want_rel, want_inv = ref_relative(d)
    torch.testing.assert_close(rel, want_rel, equal_nan=True, rtol=1e-12, atol=0)
    torch.testing.assert_close(inv, want_inv, equal_nan=True, rtol=1e-12, atol=0)
    if case == "nan_offdiag":
        assert rel[1].isnan().sum() == rel.shape[1] - 1 and inv[1].isnan()  # the row, not 0
        assert rel[[0, 2, 3]].isfinite().all()
    if case.endswith("self_pair"):
        assert rel.isfinite().all()  # the self pair is skipped


@pytest.mark.parametrize("case", list(_nan_inf_cases()))
@pytest.mark.parametrize("w_kind", ["soft", "zero", "one"])
def test_nonfinite_relaxed_contrastive_matches_reference(case, w_kind):
    d = _nan_inf_cases()[case]
    w = {"soft": rand_dist(4, 7, seed=2, scale=1.0), "zero": torch.zeros(4, 7, dtype=torch.float64),
         "one": torch.ones(4, 7, dtype=torch.float64)}[w_kind]
    v, g = OPS.relaxed_contrastive_rows(d, w, 1.0, 1.0)
    want_v, want_g = ref_grad(ref_rc, d, w, 1.0, 1.0)
    torch.testing.assert_close(v, want_v, equal_nan=True, rtol=1e-12, atol=0)
    torch.testing.assert_close(g, want_g, equal_nan=True, rtol=1e-12, atol=0)
    if case == "nan_offdiag":
        assert v.isnan()
    if case.endswith("self_pair"):
        assert v.isfinite() and g.isfinite().all()


@pytest.mark.parametrize("case", list(_nan_inf_cases()))
@pytest.mark.parametrize("where", ["student", "teacher", "both"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_nonfinite_kl_matches_reference(case, where, exclude_self):
    bad = _nan_inf_cases()[case]
    good = rand_dist(4, 7, seed=33)
    df = bad if where in ("student", "both") else good
    dg = bad if where in ("teacher", "both") else good
    v, g = OPS.self_distillation_kl_rows(df, dg, 1.0, exclude_self, 1.0)
    want_v, want_g = ref_grad(ref_kl, df, dg, 1.0, exclude_self, 1.0)
    torch.testing.assert_close(v, want_v, equal_nan=True, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g, want_g, equal_nan=True, rtol=1e-12, atol=1e-14)
    if case == "nan_offdiag":  # the whole row's gradient is NaN (but the excluded self column: 0)
        assert v.isnan() and g[1, [0, 2, 3, 4, 5, 6]].isnan().all()
        assert (g[1, 1] == 0) if exclude_self else g[1, 1].isnan()
        assert g[[0, 2, 3]].isfinite().all()
    if case == "nan_self_pair" and exclude_self:
        assert v.isfinite() and g.isfinite().all()
    if case == "inf_offdiag" and where == "both":
        assert v.isfinite() and g.isfinite().all()  # p = q = 0 there


# ---------------------------------------------------------------------------------------------------------
# 5. bad input
# ---------------------------------------------------------------------------------------------------------
def test_bad_input():
    d = rand_dist(3, 5)
    rel, inv = OPS.row_relative(d, 1e-12)
    with pytest.raises(ValueError, match="dist must be an"):
        OPS.row_relative(rand_dist(5, 3), 1e-12)  # c < n
    with pytest.raises(ValueError, match="dist must be an"):
        OPS.row_relative(torch.rand(5, dtype=torch.float64), 1e-12)  # 1-D
    with pytest.raises(TypeError, match="dist must be float32 or float64"):
        OPS.row_relative(torch.ones(3, 5, dtype=torch.int64), 1e-12)
    with pytest.raises(ValueError, match="rel must be an"):
        OPS.row_relative_backward(d.t().contiguous(), d.t().contiguous(), inv)
    with pytest.raises(ValueError, match="grad must have rel's shape"):
        OPS.row_relative_backward(rand_dist(3, 4), rel, inv)
    with pytest.raises(TypeError, match="grad must have rel's dtype"):
        OPS.row_relative_backward(d.float(), rel, inv)
    with pytest.raises(ValueError, match="inv must have shape"):
        OPS.row_relative_backward(d, rel, inv[:2])
    with pytest.raises(TypeError, match="inv must have dtype"):
        OPS.row_relative_backward(d, rel, inv.float())
    with pytest.raises(ValueError, match="dist must be an"):
        OPS.relaxed_contrastive_rows(rand_dist(4, 2), rand_dist(4, 2), 1.0, 1.0)
    with pytest.raises(ValueError, match="weights must have dist's shape"):
        OPS.relaxed_contrastive_rows(d, rand_dist(3, 3), 1.0, 1.0)
    with pytest.raises(TypeError, match="weights must have dist's dtype"):
        OPS.relaxed_contrastive_rows(d, d.float(), 1.0, 1.0)
    with pytest.raises(TypeError, match="dist must be float32 or float64"):
        OPS.relaxed_contrastive_rows(torch.ones(3, 5, dtype=torch.int32), torch.ones(3, 5, dtype=torch.int32), 1.0, 1.0)
    with pytest.raises(ValueError, match="student_dist must be an"):
        OPS.self_distillation_kl_rows(rand_dist(5, 3), rand_dist(5, 3), 1.0, True, 1.0)
    with pytest.raises(ValueError, match="student_dist must be an"):
        OPS.self_distillation_kl_rows(torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64),
                                      1.0, True, 1.0)
    with pytest.raises(ValueError, match="teacher_dist must have student_dist's shape"):
        OPS.self_distillation_kl_rows(d, rand_dist(3, 6), 1.0, True, 1.0)
    with pytest.raises(TypeError, match="teacher_dist must have student_dist's dtype"):
        OPS.self_distillation_kl_rows(d, d.float(), 1.0, True, 1.0)
    with pytest.raises(TypeError, match="student_dist must be float32 or float64"):
        OPS.self_distillation_kl_rows(torch.ones(3, 5, dtype=torch.int64), torch.ones(3, 5, dtype=torch.int64),
                                      1.0, True, 1.0)
    for T in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be positive"):
            OPS.self_distillation_kl_rows(d, d, T, True, 1.0)


# ---------------------------------------------------------------------------------------------------------
# 6. threads: bitwise identical for 1 and 2 threads
# ---------------------------------------------------------------------------------------------------------
def _thread_inputs(dtype):
    n, c = 300, 5000  # 3 rows per task (16k elements): split over the threads
    gen = torch.Generator().manual_seed(1)
    d = (torch.rand(n, c, generator=gen, dtype=torch.float64) * 2).to(dtype)
    w = torch.rand(n, c, generator=gen, dtype=torch.float64).to(dtype)
    dg = (torch.rand(n, c, generator=gen, dtype=torch.float64) * 2).to(dtype)
    rel, inv = OPS.row_relative(d, 1e-12)  # fixed inputs for the other ops
    return d, w, dg, rel, inv


def _with_threads(k, fn):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(k)
        return fn()
    finally:
        torch.set_num_threads(before)


THREAD_OPS = {
    "row_relative": lambda d, w, dg, rel, inv: OPS.row_relative(d, 1e-12),
    "row_relative_backward": lambda d, w, dg, rel, inv: (OPS.row_relative_backward(w, rel, inv),),
    "relaxed_contrastive_rows": lambda d, w, dg, rel, inv: OPS.relaxed_contrastive_rows(rel, w, 1.0, 1 / 300),
    "kl_exclude_self": lambda d, w, dg, rel, inv: OPS.self_distillation_kl_rows(rel, dg, 1.0, True, 1 / 300),
    "kl_full_rows": lambda d, w, dg, rel, inv: OPS.self_distillation_kl_rows(rel, dg, 0.5, False, 1 / 300),
}


# float64 row_relative once differed in the last bits between 1 and 2 threads (at::parallel_for's inline and
# OpenMP copies of the row loop vectorised the row sum differently); the kernels now sum over fixed lanes.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_thread_count_row_relative(dtype):
    args = _thread_inputs(dtype)
    one = _with_threads(1, lambda: THREAD_OPS["row_relative"](*args))
    two = _with_threads(2, lambda: THREAD_OPS["row_relative"](*args))
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", [k for k in THREAD_OPS if k != "row_relative"])
def test_thread_count_does_not_change_results(name, dtype):
    """Bitwise equal for 1 and 2 threads (row sums in double, added in row order), the same inputs."""
    args = _thread_inputs(dtype)
    one = _with_threads(1, lambda: THREAD_OPS[name](*args))
    two = _with_threads(2, lambda: THREAD_OPS[name](*args))
    for a, b in zip(one, two):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------
# 7. CUDA parity
# ---------------------------------------------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", [(1, 1), (1, 3), (3, 3), (7, 20), (64, 300), (300, 2000)])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_cuda_matches_cpu(n, c, dtype, exclude_self):
    if exclude_self and c < 2:
        pytest.skip("exclude_self needs c >= 2")
    d = rand_dist(n, c, dtype, seed=n + c)
    w = rand_dist(n, c, dtype, seed=n + c + 1, scale=1.0)
    dg = rand_dist(n, c, dtype, seed=n + c + 2)
    d[0, min(1, c - 1)] = 0.0
    cu = lambda t: t.cuda()
    t = tol(dtype)
    rel, inv = OPS.row_relative(d, 1e-12)
    rel_c, inv_c = OPS.row_relative(cu(d), 1e-12)
    torch.testing.assert_close(rel_c.cpu(), rel, **t)
    torch.testing.assert_close(inv_c.cpu(), inv, **t)
    torch.testing.assert_close(OPS.row_relative_backward(cu(w), rel_c, inv_c).cpu(),
                               OPS.row_relative_backward(w, rel, inv), **t)
    for a, b in zip(OPS.relaxed_contrastive_rows(cu(rel), cu(w), 1.0, 0.5), OPS.relaxed_contrastive_rows(rel, w, 1.0, 0.5)):
        torch.testing.assert_close(a.cpu(), b, **t)
    for a, b in zip(OPS.relaxed_contrastive_rows(cu(rel), cu(w), 1.0, 0.5, n),  # memory columns: pull only
                    OPS.relaxed_contrastive_rows(rel, w, 1.0, 0.5, n)):
        torch.testing.assert_close(a.cpu(), b, **t)
    for a, b in zip(OPS.self_distillation_kl_rows(cu(rel), cu(dg), 0.5, exclude_self, 0.5),
                    OPS.self_distillation_kl_rows(rel, dg, 0.5, exclude_self, 0.5)):
        torch.testing.assert_close(a.cpu(), b, **t)


@requires_cuda
def test_cuda_nan_rows_match_cpu():
    d = _nan_inf_cases()["nan_offdiag"]
    w = rand_dist(4, 7, seed=2, scale=1.0)
    for op, args in ((OPS.row_relative, (d, 1e-12)), (OPS.relaxed_contrastive_rows, (d, w, 1.0, 1.0)),
                     (OPS.self_distillation_kl_rows, (d, w, 1.0, True, 1.0))):
        on_gpu = op(*[a.cuda() if torch.is_tensor(a) else a for a in args])
        for a, b in zip(on_gpu, op(*args)):
            torch.testing.assert_close(a.cpu(), b, equal_nan=True)


# ---------------------------------------------------------------------------------------------------------
# 8. the losses on top
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,c", [(2, 2), (3, 5), (5, 9)])
def test_relaxed_contrastive_from_distances_gradcheck(n, c):
    d = rand_dist(n, c, seed=c).requires_grad_(True)
    w = rand_dist(n, c, seed=c + 1, scale=1.0)
    loss = RelaxedContrastiveLoss(delta=1.0)
    torch.testing.assert_close(loss.from_distances(d, w), ref_rc(d, w, 1.0, 1.0 / n))
    assert torch.autograd.gradcheck(lambda x: loss.from_distances(x, w), (d,))


@pytest.mark.parametrize("n,c", [(2, 3), (3, 5), (5, 9)])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_self_distillation_from_distances_gradcheck(n, c, exclude_self):
    df = rand_dist(n, c, seed=c).requires_grad_(True)
    dg = rand_dist(n, c, seed=c + 1)
    loss = SelfDistillationKL(temperature=0.5, exclude_self=exclude_self)
    torch.testing.assert_close(loss.from_distances(df, dg), ref_kl(df, dg, 0.5, exclude_self, 1.0 / n))
    assert torch.autograd.gradcheck(lambda x: loss.from_distances(x, dg), (df,))


def _ref_euclid(x, y):
    """||x_i - y_j|| with the self pair (column i of row i) kept off sqrt's kink; ref_relative drops it."""
    sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return (sq + torch.eye(x.shape[0], y.shape[0], dtype=x.dtype)).sqrt()


@pytest.mark.parametrize("form", ["code", "thesis"])
def test_stml_loss_with_memory(form):
    n, m, k, T, delta = 6, 5, 2, 0.5, 1.0
    gen = torch.Generator().manual_seed(17)
    f = torch.randn(n, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    mem_f = torch.randn(m, 4, generator=gen, dtype=torch.float64)
    mem_g = torch.randn(m, 5, generator=gen, dtype=torch.float64)
    mem_t = torch.randn(m, 3, generator=gen, dtype=torch.float64)
    ids, mem_ids = torch.arange(n), torch.arange(n, n + m)
    loss = STMLLoss(sigma=3.0, k=k, delta=delta, temperature=T, form=form)
    memory = (mem_f, mem_g, mem_t, mem_ids)
    total = loss(f, g, t, ids, memory=memory)
    p = loss.parts
    c = n + m
    assert p.weights.shape == (n, c)
    torch.testing.assert_close(p.total, 0.5 * (p.rc_f + p.rc_g) + p.kl, rtol=1e-14, atol=0)

    # the same loss from the references, with the op's soft targets w
    w = p.weights.double()
    rel_f = ref_relative(_ref_euclid(f, torch.cat([f, mem_f])))[0]
    rel_g = ref_relative(_ref_euclid(g, torch.cat([g, mem_g])))[0]
    rc_scale = 1.0 / (n * (c - 1)) if form == "code" else 1.0 / n
    kl_scale = (T ** 2 if form == "code" else 1.0) / n
    rc_f, rc_g = ref_rc(rel_f, w, delta, rc_scale), ref_rc(rel_g, w, delta, rc_scale)
    kl = ref_kl(rel_f, rel_g.detach(), T, form == "thesis", kl_scale)
    ref = 0.5 * (rc_f + rc_g) + kl
    torch.testing.assert_close(total, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p.rc_f, rc_f.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p.rc_g, rc_g.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p.kl, kl.detach(), rtol=1e-10, atol=1e-12)
    got = torch.autograd.grad(total, (f, g))
    want = torch.autograd.grad(ref, (f, g))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)

    # f: the loss is a plain function of it. g: the KL's target P^g is detached by design (stop-gradient),
    # so total's gradient in g is that of 0.5 (rc_f + rc_g) = total - kl (parts are not differentiable).
    # (the soft targets passed in: they are fixed by the teacher, and recomputing them per call is most of the time)
    w_fixed = p.weights.detach().clone()
    torch.testing.assert_close(loss(f, g, t, ids, memory=memory, weights=w_fixed), total, rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda a: loss(a, g.detach(), t, ids, memory=memory, weights=w_fixed), (f,))

    def without_kl(b):
        out = loss(f.detach(), b, t, ids, memory=memory, weights=w_fixed)
        return out - loss.parts.kl

    assert torch.autograd.gradcheck(without_kl, (g,))
