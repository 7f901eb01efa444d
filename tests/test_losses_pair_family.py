"""Issue 12, pair / tuple family: CircleLoss, AngularLoss, MarginLoss, SupConLoss (PML's), LogRatioLoss and
the MahalanobisMetric distance (ours). Plain loop references written from the papers (float64 values and
gradients), gradcheck, parity with PML on random configurations, autocast, degenerate batches, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssml_fast import distances as Dist
from ssml_fast import losses as L
from ssml_fast import miners as M
from ssml_fast import reducers as Red

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
from pytorch_metric_learning import distances as pml_distances  # noqa: E402
from pytorch_metric_learning import miners as pml_miners  # noqa: E402
from pytorch_metric_learning import reducers as pml_reducers  # noqa: E402

f64 = torch.float64


def data(B=10, D=5, n_classes=3, seed=0, dtype=f64, normalize=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=dtype)
    y = torch.randint(0, n_classes, (B,), generator=g)
    return (F.normalize(x, dim=1) if normalize else x), y


def grad_of(fn, x):
    x = x.clone().requires_grad_(True)
    v = fn(x)
    (g,) = torch.autograd.grad(v, x, allow_unused=True)
    return v.detach(), (torch.zeros_like(x) if g is None else g)


def assert_value_and_grad(ours, ref, x, rtol=1e-9, atol=1e-11):
    va, ga = grad_of(ours, x)
    vb, gb = grad_of(ref, x)
    torch.testing.assert_close(va, vb.to(va.dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(ga, gb.to(ga.dtype), rtol=rtol * 10, atol=atol * 10)


# ------------------------------------------------------------------------------------------------------
# plain loop references, as the papers write them (the batch is its own reference; a sample is never
# paired with itself)

def ref_circle(x, y, m=0.4, gamma=80.0):
    """Sun et al. 2020 eq 4 / PML: softplus(lse_p + lse_n), weights detached, mean over non-zero anchors."""
    s = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T
    out = []
    for i in range(len(y)):
        zp = [-gamma * torch.relu(1 + m - s[i, j]).detach() * (s[i, j] - (1 - m))
              for j in range(len(y)) if j != i and y[j] == y[i]]
        zn = [gamma * torch.relu(s[i, j] + m).detach() * (s[i, j] - m) for j in range(len(y)) if y[j] != y[i]]
        if zp and zn:
            out.append(F.softplus(torch.logsumexp(torch.stack(zp), 0) + torch.logsumexp(torch.stack(zn), 0)))
    out = [v for v in out if v > 0]
    return torch.stack(out).mean() if out else x.sum() * 0


def ref_angular(x, y, alpha=40.0):
    """Wang et al. 2017: per positive pair log(1 + sum_n exp(4 tan^2 (xa + xp)^T xn - 2 (1 + tan^2) xa^T xp)),
    xa, xp normalised, xn as given (PML); mean over pairs."""
    t = math.tan(math.radians(alpha)) ** 2
    xn_ = F.normalize(x, dim=1)
    out = []
    for a in range(len(y)):
        for p in range(len(y)):
            if a == p or y[a] != y[p]:
                continue
            terms = [4 * t * (xn_[a] + xn_[p]) @ x[n] - 2 * (1 + t) * xn_[a] @ xn_[p]
                     for n in range(len(y)) if y[n] != y[a]]
            out.append(torch.log(1 + torch.exp(torch.stack(terms)).sum()) if terms else x.sum() * 0)
    return torch.stack(out).mean() if out else x.sum() * 0


def ref_margin(x, y, margin=0.2, beta=1.2, nu=0.0, betas=None):
    """Wu et al. 2017 over all triplets, d the euclidean distance of normalised embeddings; sum over the
    non-zero terms / their number; with per-class betas (a tensor) nu * sum beta[y_a] / divisor is added."""
    xn_ = F.normalize(x, dim=1)
    total, count, reg = 0, 0, 0
    for a in range(len(y)):
        b = beta if betas is None else betas[y[a]]
        for p in range(len(y)):
            if p == a or y[p] != y[a]:
                continue
            for n in range(len(y)):
                if y[n] == y[a]:
                    continue
                lp = torch.relu(torch.linalg.vector_norm(xn_[a] - xn_[p]) - b + margin)
                ln = torch.relu(b - torch.linalg.vector_norm(xn_[a] - xn_[n]) + margin)
                total = total + lp + ln
                count += int(lp > 0) + int(ln > 0)
                reg = reg + nu * b
    if count == 0:
        return x.sum() * 0
    return total / count + (reg / count if betas is not None else 0)


def ref_supcon(x, y, temperature=0.1):
    """Khosla et al. 2020 L^sup_out with the cosine similarity; mean over anchors with a non-zero loss."""
    s = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T / temperature
    out = []
    for i in range(len(y)):
        others = [k for k in range(len(y)) if k != i]
        pos = [p for p in others if y[p] == y[i]]
        if not pos:
            continue
        den = torch.logsumexp(torch.stack([s[i, k] for k in others]), 0)
        out.append(-torch.stack([s[i, p] - den for p in pos]).mean())
    out = [v for v in out if v > 0]
    return torch.stack(out).mean() if out else x.sum() * 0


def ref_log_ratio(x, labels, eps=1e-6):
    """Kim et al. 2019: every anchor, every unordered pair {i, j} of the others,
    (log(d_ai / d_aj) - log(D_ai / D_aj))^2 with log(. + eps); mean per anchor, then over anchors."""
    y = labels if labels.dim() == 2 else labels[:, None]
    per_anchor = []
    for a in range(len(x)):
        others = [k for k in range(len(x)) if k != a]
        terms = []
        for u in range(len(others)):
            for v in range(u + 1, len(others)):
                i, j = others[u], others[v]
                d = [torch.log(torch.linalg.vector_norm(x[a] - x[k]) + eps) for k in (i, j)]
                D = [torch.log(torch.linalg.vector_norm(y[a] - y[k]) + eps) for k in (i, j)]
                terms.append(((d[0] - d[1]) - (D[0] - D[1])) ** 2)
        per_anchor.append(torch.stack(terms).mean())
    return torch.stack(per_anchor).mean()


# ------------------------------------------------------------------------------------------------------
# values and gradients against the references (float64)

@pytest.mark.parametrize("seed,n_classes", [(0, 3), (1, 2), (2, 5)])
def test_circle_matches_loop_reference(seed, n_classes):
    x, y = data(10, 5, n_classes, seed)
    assert_value_and_grad(lambda e: L.CircleLoss(m=0.25, gamma=8)(e, y), lambda e: ref_circle(e, y, 0.25, 8.0), x)


@pytest.mark.parametrize("seed,n_classes,alpha,normalize", [(0, 3, 40, True), (1, 2, 45, False), (2, 4, 30, False)])
def test_angular_matches_loop_reference(seed, n_classes, alpha, normalize):
    x, y = data(10, 5, n_classes, seed, normalize=normalize)
    assert_value_and_grad(lambda e: L.AngularLoss(alpha)(e, y), lambda e: ref_angular(e, y, alpha), x)


@pytest.mark.parametrize("seed", [0, 1])
def test_margin_matches_loop_reference(seed):
    x, y = data(9, 4, 3, seed)
    # beta 0.75: exact in float32 (beta is a float32 tensor, as in PML)
    assert_value_and_grad(lambda e: L.MarginLoss(0.2, beta=0.75)(e, y), lambda e: ref_margin(e, y, 0.2, 0.75), x)
    # per-class learnable betas: the value and the betas' gradient
    loss = L.MarginLoss(0.1, nu=0.3, beta=1.0, learn_beta=True, num_classes=3)
    with torch.no_grad():
        loss.beta.copy_(torch.tensor([0.9, 1.1, 1.3]))
    betas = loss.beta.detach().clone().to(f64).requires_grad_(True)
    v_ref = ref_margin(x, y, 0.1, nu=0.3, betas=betas)
    v = loss(x, y)
    torch.testing.assert_close(v, v_ref.to(v.dtype), rtol=1e-6, atol=1e-7)
    (g,) = torch.autograd.grad(v, loss.beta)
    (g_ref,) = torch.autograd.grad(v_ref, betas)
    torch.testing.assert_close(g, g_ref.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed,n_classes", [(0, 3), (1, 2), (3, 6)])
def test_supcon_matches_loop_reference(seed, n_classes):
    x, y = data(10, 5, n_classes, seed)
    assert_value_and_grad(lambda e: L.SupConLoss(0.2)(e, y), lambda e: ref_supcon(e, y, 0.2), x)


@pytest.mark.parametrize("K", [1, 3])
def test_log_ratio_matches_loop_reference(K):
    x, _ = data(8, 4, 2, seed=K)
    labels = torch.rand(8, K, dtype=f64, generator=torch.Generator().manual_seed(5)) * 10
    labels = labels[:, 0] if K == 1 else labels
    assert_value_and_grad(lambda e: L.LogRatioLoss()(e, labels), lambda e: ref_log_ratio(e, labels), x,
                          rtol=1e-8, atol=1e-10)


def test_log_ratio_triplets_ref_emb_and_callable_label_distance():
    x, _ = data(6, 4, 2, seed=3)
    r, _ = data(5, 4, 2, seed=4)
    y = torch.rand(6, dtype=f64) * 3
    ry = torch.rand(5, dtype=f64) * 3
    # given triplets: the mean of their squared log-ratio differences
    t = (torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]), torch.tensor([4, 0, 5]))
    u = lambda a, i: torch.log((x[a] - x[i]).norm() + 1e-6) - torch.log((y[a] - y[i]).abs() + 1e-6)  # noqa: E731
    expect = torch.stack([(u(a, i) - u(a, j)) ** 2 for a, i, j in zip(*t)]).mean()
    torch.testing.assert_close(L.LogRatioLoss()(x, y, t), expect)
    # pairs (a1, p, a2, n) are the triplets (a1, p, n) with a1 == a2 (PML's conversion)
    pairs = (torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0, 0, 1]), torch.tensor([4, 3, 0]))
    expect = torch.stack([(u(a, i) - u(a, j)) ** 2 for a, i, j in ((0, 1, 4), (0, 1, 3), (1, 2, 0))]).mean()
    torch.testing.assert_close(L.LogRatioLoss()(x, y, pairs), expect)
    # a reference set: every anchor against all R reference rows
    def ref(e):
        out = []
        for a in range(6):
            w = [torch.log((e[a] - r[i]).norm() + 1e-6) - torch.log((y[a] - ry[i]).abs() + 1e-6) for i in range(5)]
            out.append(torch.stack([(w[i] - w[j]) ** 2 for i in range(5) for j in range(i + 1, 5)]).mean())
        return torch.stack(out).mean()
    assert_value_and_grad(lambda e: L.LogRatioLoss()(e, y, ref_emb=r, ref_labels=ry), ref, x, rtol=1e-8, atol=1e-10)
    # label_distance as a callable gives the same as the string it implements
    sq = L.LogRatioLoss(label_distance=lambda a, b: torch.cdist(a, b) ** 2)(x, y)
    torch.testing.assert_close(sq, L.LogRatioLoss(label_distance="sqeuclidean")(x, y))


def test_gradcheck():
    x, y = data(7, 3, 2, seed=1)
    x = x.requires_grad_(True)
    lab = torch.rand(7, dtype=f64)
    r = x[:4].detach() * 1.5
    for fn in (lambda e: L.AngularLoss()(e, y), lambda e: L.SupConLoss(0.5)(e, y),
               lambda e: L.SupConLoss(0.5, distance=Dist.LpDistance())(e, y),
               lambda e: L.MarginLoss(0.05, beta=1.0)(e, y), lambda e: L.LogRatioLoss()(e, lab),
               lambda e: L.AngularLoss()(e, y, ref_emb=r, ref_labels=y[:4])):
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)
    # CircleLoss's weights are detached by design, so its gradient is checked against the reference instead


# ------------------------------------------------------------------------------------------------------
# parity with PML: random configurations, label patterns with ties, singletons, one class

def label_patterns(B, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "random": torch.randint(0, max(2, B // 3), (B,), generator=g),
        "per_class": torch.arange(B) // 4,
        "singletons_and_pairs": torch.cat([torch.arange(B // 2), torch.arange(B - B // 2) // 2]),
        "one_class": torch.zeros(B, dtype=torch.long),
        "all_singletons": torch.arange(B),
        "two_classes_unequal": (torch.arange(B) >= B - 2).long(),
    }


def pml_same(ours, pml, x, rtol=1e-9, atol=1e-10):
    va, ga = grad_of(ours, x)
    vb, gb = grad_of(pml, x)
    torch.testing.assert_close(va, vb.to(va.dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(ga, gb.to(ga.dtype), rtol=rtol * 100, atol=atol * 100)


PAIRS = [
    ("circle", lambda: L.CircleLoss(), lambda: pml_losses.CircleLoss()),
    ("circle_face", lambda: L.CircleLoss(m=0.25, gamma=256), lambda: pml_losses.CircleLoss(m=0.25, gamma=256)),
    ("angular", lambda: L.AngularLoss(), lambda: pml_losses.AngularLoss()),
    ("angular_60", lambda: L.AngularLoss(60), lambda: pml_losses.AngularLoss(60)),
    ("margin", lambda: L.MarginLoss(), lambda: pml_losses.MarginLoss()),
    ("margin_beta", lambda: L.MarginLoss(0.1, nu=0.2, beta=0.8, learn_beta=True),
     lambda: pml_losses.MarginLoss(0.1, nu=0.2, beta=0.8, learn_beta=True)),
    ("margin_cos", lambda: L.MarginLoss(0.1, beta=0.5, distance=Dist.CosineSimilarity()),
     lambda: pml_losses.MarginLoss(0.1, beta=0.5, distance=pml_distances.CosineSimilarity())),
    ("supcon", lambda: L.SupConLoss(), lambda: pml_losses.SupConLoss()),
    ("supcon_lp", lambda: L.SupConLoss(0.5, distance=Dist.LpDistance()),
     lambda: pml_losses.SupConLoss(0.5, distance=pml_distances.LpDistance())),
    ("supcon_dot", lambda: L.SupConLoss(0.5, distance=Dist.DotProductSimilarity(normalize_embeddings=False)),
     lambda: pml_losses.SupConLoss(0.5, distance=pml_distances.DotProductSimilarity(normalize_embeddings=False))),
]


@pytest.mark.parametrize("name,ours,pml", PAIRS, ids=[p[0] for p in PAIRS])
def test_parity_with_pml_label_patterns(name, ours, pml):
    for seed, B in ((0, 12), (1, 9)):
        x, _ = data(B, 6, seed=seed, normalize=name.startswith("angular") and seed == 0)
        o, q = ours(), pml()
        for pattern, y in label_patterns(B, seed).items():
            try:
                pml_same(lambda e: o(e, y), lambda e: q(e, y), x)
            except AssertionError as err:
                raise AssertionError(f"{name}, labels {pattern}, seed {seed}: {err}") from None


@pytest.mark.parametrize("name,ours,pml", PAIRS, ids=[p[0] for p in PAIRS])
def test_parity_with_pml_ref_emb_and_mined_tuples(name, ours, pml):
    x, y = data(12, 6, 3, seed=4)
    r, ry = data(7, 6, 4, seed=5)
    o, q = ours(), pml()
    pml_same(lambda e: o(e, y, ref_emb=r, ref_labels=ry), lambda e: q(e, y, ref_emb=r, ref_labels=ry), x)
    for miner in (pml_miners.MultiSimilarityMiner(0.3), pml_miners.TripletMarginMiner(0.5)):
        t = miner(x.float(), y)
        pml_same(lambda e: o(e, y, t), lambda e: q(e, y, t), x)
    # our own reducers inside ours, PML's reducers (given to both) through the loss_dict protocol
    if not name.startswith("margin"):
        o2 = type(o)(reducer=Red.MeanReducer()) if name in ("circle", "supcon", "angular") else None
        if o2 is not None:
            q2 = type(q)(reducer=pml_reducers.MeanReducer())
            pml_same(lambda e: o2(e, y), lambda e: q2(e, y), x)


def test_parity_large_batch_float32_paths(device):
    """B = 64 per-class and unequal classes in float32: the class-block, slot and exact pair paths of
    AngularLoss, and the GEMM paths of Circle / SupCon, against PML (on every device present)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    per_class = torch.arange(64) // 4
    unequal = torch.cat([torch.zeros(24, dtype=torch.long), torch.arange(40) // 3 + 1])
    shuffled = per_class[torch.randperm(64, generator=g)]  # equal classes, not grouped: a permutation
    x, per_class, unequal, shuffled = (t.to(device) for t in (x, per_class, unequal, shuffled))
    for y in (per_class, shuffled, unequal):
        for o, q in ((L.AngularLoss(), pml_losses.AngularLoss()), (L.CircleLoss(), pml_losses.CircleLoss()),
                     (L.SupConLoss(), pml_losses.SupConLoss())):
            pml_same(lambda e: o(e, y), lambda e: q(e, y), x, rtol=2e-5, atol=1e-5)
    # embeddings far from the sphere: the factorised angular sums could underflow, the pair path is used
    big = x * 30
    pml_same(lambda e: L.AngularLoss()(e, per_class), lambda e: pml_losses.AngularLoss()(e, per_class), big,
             rtol=2e-5, atol=1e-4)


def test_angular_paths_agree_float64():
    """Factorised (class blocks, slots) and exact per-pair sums are the same function."""
    from ssml_fast.losses import angular_loss as A
    x, y = data(16, 4, 4, seed=7)
    blocks = L.AngularLoss()(x, y)
    old = A._UNDERFLOW[f64]
    A._UNDERFLOW[f64] = float("inf")  # forces the per-pair path
    try:
        pairs = L.AngularLoss()(x, y)
    finally:
        A._UNDERFLOW[f64] = old
    t = M.BatchHardMiner()(x, y)  # mined (a, p, n): the slot path
    mined = L.AngularLoss()(x, y, t)
    torch.testing.assert_close(blocks, pairs)
    torch.testing.assert_close(mined, pml_losses.AngularLoss()(x, y, t))


def test_pml_quirks():
    # PML's GenericPairLoss skips a batch with at most one positive and one negative pair
    x, _ = data(3, 4)
    y = torch.tensor([0, 0, 1])  # two positive pairs, four negative pairs: computed
    for o, q in ((L.CircleLoss(), pml_losses.CircleLoss()), (L.SupConLoss(), pml_losses.SupConLoss())):
        pml_same(lambda e: o(e, y), lambda e: q(e, y), x)
        t = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2]))
        assert float(o(x, y, t)) == float(q(x, y, t)) == 0.0
    # MarginLoss: beta is a 1-D tensor (a Parameter with learn_beta), per-class with num_classes
    assert len(L.MarginLoss().beta) == 1 and len(L.MarginLoss(learn_beta=True, num_classes=35).beta) == 35
    assert isinstance(L.MarginLoss(learn_beta=True).beta, torch.nn.Parameter)
    assert [n for n, _ in L.MarginLoss(learn_beta=True).named_parameters()] == ["beta"]
    assert list(L.MarginLoss().parameters()) == []


# ------------------------------------------------------------------------------------------------------
# dtypes, autocast, degenerate batches, errors

ALL = [lambda: L.CircleLoss(), lambda: L.AngularLoss(), lambda: L.MarginLoss(), lambda: L.SupConLoss()]


@pytest.mark.parametrize("make", ALL + [lambda: L.MarginLoss(learn_beta=True, nu=0.1, num_classes=4)])
def test_half_inputs_and_autocast_compute_in_float32(make):
    x, y = data(16, 8, 4, seed=2, dtype=torch.float32)
    loss = make()
    ref = loss(x, y)
    for half in (torch.bfloat16, torch.float16):
        out = loss(x.to(half), y)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, loss(x.to(half).float(), y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xx = x.clone().requires_grad_(True)
        out = loss(xx, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    out.backward()
    assert torch.isfinite(xx.grad).all()


def test_log_ratio_half_and_autocast():
    x, _ = data(10, 4, 2, dtype=torch.float32)
    y = torch.rand(10)
    ref = L.LogRatioLoss()(x, y)
    assert L.LogRatioLoss()(x.bfloat16(), y).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(L.LogRatioLoss()(x, y), ref)


@pytest.mark.parametrize("make", ALL + [lambda: L.LogRatioLoss()])
def test_degenerate_batches_are_finite(make):
    loss = make()
    is_lr = isinstance(loss, L.LogRatioLoss)
    cases = [(torch.randn(0, 4), torch.zeros(0, dtype=torch.long)), (torch.randn(1, 4), torch.zeros(1, dtype=torch.long)),
             (torch.randn(5, 4), torch.zeros(5, dtype=torch.long)), (torch.randn(5, 4), torch.arange(5)),
             (torch.zeros(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]))]
    for x, y in cases:
        x = x.requires_grad_(True)
        v = loss(x, y.double() if is_lr else y)
        assert torch.isfinite(v), (x.shape, y)
        v.backward()
        assert torch.isfinite(x.grad).all()


def test_errors_name_the_argument():
    x, y = data(6, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="CosineSimilarity"):
        L.CircleLoss(distance=Dist.LpDistance())
    with pytest.raises(ValueError, match="gamma"):
        L.CircleLoss(gamma=0)
    with pytest.raises(ValueError, match="LpDistance"):
        L.AngularLoss(distance=Dist.CosineSimilarity())
    with pytest.raises(ValueError, match="alpha"):
        L.AngularLoss(alpha=90)
    with pytest.raises(ValueError, match="labels"):
        L.AngularLoss()(x, indices_tuple=(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(ValueError, match="triplets_per_anchor"):
        L.MarginLoss(triplets_per_anchor=0)
    with pytest.raises(TypeError, match="learn_beta"):
        L.MarginLoss(learn_beta="yes")
    with pytest.raises(ValueError, match="num_classes"):
        L.MarginLoss(num_classes=2)(x, torch.tensor([0, 1, 2, 0, 1, 2]))
    with pytest.raises(ValueError, match="temperature"):
        L.SupConLoss(temperature=0)
    with pytest.raises(ValueError, match="labels"):
        L.LogRatioLoss()(x)
    with pytest.raises(ValueError, match="labels"):
        L.LogRatioLoss()(x, torch.rand(5))
    with pytest.raises(ValueError, match="similarity"):
        L.LogRatioLoss(distance=Dist.CosineSimilarity())
    with pytest.raises(ValueError, match="label_distance"):
        L.LogRatioLoss(label_distance="manhattan")
    with pytest.raises(ValueError, match="labels"):
        L.SupConLoss()(x)
    with pytest.raises(ValueError, match="embedding_size"):
        Dist.MahalanobisMetric(5)(x)
    with pytest.raises(ValueError, match="init"):
        Dist.MahalanobisMetric(4, init=torch.eye(3))


# ------------------------------------------------------------------------------------------------------
# MahalanobisMetric

def test_mahalanobis_is_the_formula():
    g = torch.Generator().manual_seed(0)
    Lm = torch.randn(3, 5, generator=g, dtype=f64)
    metric = Dist.MahalanobisMetric(5, 3, init=Lm).double()
    x, z = torch.randn(6, 5, generator=g, dtype=f64), torch.randn(4, 5, generator=g, dtype=f64)
    Mx = Lm.T @ Lm
    expect = torch.stack([torch.stack([torch.sqrt((x[i] - z[j]) @ Mx @ (x[i] - z[j])) for j in range(4)])
                          for i in range(6)])
    torch.testing.assert_close(metric(x, z), expect)
    torch.testing.assert_close(metric.M, Mx)
    torch.testing.assert_close(metric.pairwise_distance(x[:4], z), expect.diagonal())
    sq = Dist.MahalanobisMetric(5, 3, init=Lm, power=2).double()
    torch.testing.assert_close(sq(x, z), expect ** 2)
    assert torch.all(metric(x).diagonal() == 0)
    # identity init: the euclidean distance
    torch.testing.assert_close(Dist.MahalanobisMetric(5).double()(x, z), torch.cdist(x, z))
    assert not metric.is_inverted and metric.margin(torch.tensor(2.0), torch.tensor(1.0)) == 1.0


def test_mahalanobis_as_the_distance_of_losses_and_miners():
    x, y = data(16, 6, 4, seed=3, dtype=torch.float32)
    for make in (lambda d: L.TripletMarginLoss(0.2, distance=d), lambda d: L.ContrastiveLoss(0.0, 1.0, distance=d),
                 lambda d: L.MarginLoss(distance=d), lambda d: L.LogRatioLoss(distance=d)):
        metric = Dist.MahalanobisMetric(6, init=torch.randn(6, 6, generator=torch.Generator().manual_seed(1)))
        loss = make(metric)
        assert any(p is metric.L for p in loss.parameters())  # the optimizer sees L through the loss
        labels = torch.rand(16) if isinstance(loss, L.LogRatioLoss) else y
        v = loss(x, labels)
        v.backward()
        assert metric.L.grad is not None and metric.L.grad.abs().sum() > 0
        # the loss with the metric equals the loss with an LpDistance on L x
        plain = make(Dist.LpDistance(normalize_embeddings=False))
        torch.testing.assert_close(v, plain(x @ metric.L.detach().T, labels), rtol=1e-5, atol=1e-6)
    metric = Dist.MahalanobisMetric(6)
    t = M.BatchHardMiner(distance=metric)(x, y)
    torch.testing.assert_close(torch.stack(t), torch.stack(M.BatchHardMiner(distance=Dist.LpDistance(
        normalize_embeddings=False))(x, y)))


def test_mahalanobis_gradient_float64_and_autocast():
    g = torch.Generator().manual_seed(2)
    Lm = torch.randn(4, 4, generator=g, dtype=f64).requires_grad_(True)
    x, z = torch.randn(5, 4, generator=g, dtype=f64), torch.randn(3, 4, generator=g, dtype=f64)
    metric = Dist.MahalanobisMetric(4, init=Lm.detach()).double()
    metric(x, z).square().sum().backward()
    (g_ref,) = torch.autograd.grad(((x @ Lm.T)[:, None] - (z @ Lm.T)[None]).square().sum(), Lm)
    torch.testing.assert_close(metric.L.grad, g_ref, rtol=1e-7, atol=1e-9)
    assert torch.autograd.gradcheck(lambda a, b: metric(a, b), (x.clone().requires_grad_(True),
                                                               z.clone().requires_grad_(True)))
    # float32 under autocast bf16: a float32 matrix
    m32 = Dist.MahalanobisMetric(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m32(x.float())
    assert out.dtype == torch.float32
    assert torch.isfinite(L.ContrastiveLoss(distance=m32)(x.float(), torch.tensor([0, 0, 1, 1, 2])))
