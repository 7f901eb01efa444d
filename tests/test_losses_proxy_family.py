"""Issue 12, proxy / classification family: ArcFace, SubCenterArcFace, CosFace, LargeMarginSoftmax,
SphereFace, NormalizedSoftmax, SoftTriple (PML's classes) and CenterLoss (Wen et al. 2016).

Each loss has a plain reference below, the formula of its paper written as loops over samples and classes
(no PML code), checked in float64 for values and gradients; then gradcheck, parity with PML 2.9 on random
configurations (same weights copied in), CPU bfloat16 autocast, degenerate batches and argument errors.
"""
import math

import pytest
import torch

from ssml_fast import losses as L

DT = torch.float64


# ---------------------------------------------------------------- plain references (loops, float64)

def _cos(a, b):
    return (a @ b) / (a.norm() * b.norm())


def _ce(logits_row, y):
    """-log softmax_y of one row of logits (a list of 0-d tensors)."""
    return torch.logsumexp(torch.stack(logits_row), 0) - logits_row[y]


def psi_arcface(c, m):
    theta = torch.acos(c.clamp(-1, 1))
    return torch.cos(theta + m) if float(theta) + m <= math.pi else torch.cos(theta) - m * math.sin(m)


def psi_large_margin(c, m):
    """(-1)^k cos(m theta) - 2k, theta in [k pi/m, (k+1) pi/m] (Liu et al. 2016, eq. 6), cos(m theta) taken
    directly as the cosine of the multiple angle."""
    theta = torch.acos(c.clamp(-1, 1))
    k = min(int(float(theta) // (math.pi / m)), m)
    return (-1) ** k * torch.cos(m * theta) - 2 * k


def ref_margin_softmax(x, W, y, kind, margin, scale, K=1):
    """Mean over i of -log softmax_{y_i}(l_i): l_ij = scale * mag_ij * cos_ij, target with psi."""
    B, C = x.shape[0], W.shape[1] // K
    total = 0
    for i in range(B):
        row = []
        for j in range(C):
            cos = max((_cos(x[i], W[:, j * K + k]) for k in range(K)), key=lambda c: float(c.detach()))
            mag = 1.0
            if kind in ("large_margin", "sphereface"):
                mag = x[i].norm()
            if kind == "large_margin":
                mag = mag * W[:, j].norm()
            if j == int(y[i]):
                if kind == "arcface":
                    cos = psi_arcface(cos, math.radians(margin))
                elif kind == "cosface":
                    cos = cos - margin
                else:
                    cos = psi_large_margin(cos, margin)
            row.append(scale * mag * cos)
        total = total + _ce(row, int(y[i]))
    return total / B


def ref_normalized_softmax(x, W, y, T):
    total = 0
    for i in range(x.shape[0]):
        row = [_cos(x[i], W[:, j]) / T for j in range(W.shape[1])]
        total = total + _ce(row, int(y[i]))
    return total / x.shape[0]


def ref_soft_triple(x, fc, y, K, la, gamma, margin):
    """Qian et al. 2019: S_ic = sum_k exp(s_ick / gamma) s_ick / sum_k exp(s_ick / gamma); softmax of
    la (S_ic - margin [c = y_i])."""
    C = fc.shape[1] // K
    total = 0
    for i in range(x.shape[0]):
        row = []
        for c in range(C):
            s = [_cos(x[i], fc[:, c * K + k]) for k in range(K)]
            w = [torch.exp(v / gamma) for v in s]
            S = sum(wk * sk for wk, sk in zip(w, s)) / sum(w)
            row.append(la * (S - (margin if c == int(y[i]) else 0.0)))
        total = total + _ce(row, int(y[i]))
    return total / x.shape[0]


def ref_center(x, W, b, centers, y, lam):
    """Wen et al. 2016 eq. 5 per sample, averaged: softmax CE of x W + b plus lambda/2 ||x - c_y||^2."""
    total = 0
    for i in range(x.shape[0]):
        row = [x[i] @ W[:, j] + b[j] for j in range(W.shape[1])]
        d = x[i] - centers[int(y[i])]
        total = total + _ce(row, int(y[i])) + 0.5 * lam * (d @ d)
    return total / x.shape[0]


def ref_center_update(centers, x, y, alpha):
    """eq. 4, one class at a time."""
    out = centers.clone()
    for j in range(centers.shape[0]):
        idx = [i for i in range(x.shape[0]) if int(y[i]) == j]
        delta = sum((centers[j] - x[i] for i in idx), torch.zeros_like(centers[j])) / (1 + len(idx))
        out[j] = centers[j] - alpha * delta
    return out


# name -> (build(C, D), reference(x, weight, y, loss))
MARGIN = {
    "ArcFaceLoss": (lambda C, D: L.ArcFaceLoss(C, D, margin=25.0, scale=8.0),
                    lambda x, W, y, l: ref_margin_softmax(x, W, y, "arcface", 25.0, 8.0)),
    "SubCenterArcFaceLoss": (lambda C, D: L.SubCenterArcFaceLoss(C, D, margin=20.0, scale=6.0, sub_centers=3),
                             lambda x, W, y, l: ref_margin_softmax(x, W, y, "arcface", 20.0, 6.0, K=3)),
    "CosFaceLoss": (lambda C, D: L.CosFaceLoss(C, D, margin=0.3, scale=7.0),
                    lambda x, W, y, l: ref_margin_softmax(x, W, y, "cosface", 0.3, 7.0)),
    "LargeMarginSoftmaxLoss": (lambda C, D: L.LargeMarginSoftmaxLoss(C, D, margin=3, scale=0.7),
                               lambda x, W, y, l: ref_margin_softmax(x, W, y, "large_margin", 3, 0.7)),
    "SphereFaceLoss": (lambda C, D: L.SphereFaceLoss(C, D, margin=4, scale=0.8),
                       lambda x, W, y, l: ref_margin_softmax(x, W, y, "sphereface", 4, 0.8)),
    "NormalizedSoftmaxLoss": (lambda C, D: L.NormalizedSoftmaxLoss(C, D, temperature=0.2),
                              lambda x, W, y, l: ref_normalized_softmax(x, W, y, 0.2)),
    "SoftTripleLoss": (lambda C, D: L.SoftTripleLoss(C, D, centers_per_class=3, la=5.0, gamma=0.2, margin=0.05),
                       lambda x, W, y, l: ref_soft_triple(x, W, y, 3, 5.0, 0.2, 0.05)),
    "CenterLoss": (lambda C, D: L.CenterLoss(C, D, lambda_c=0.7, center_update="gradient"),
                   lambda x, W, y, l: ref_center(x, W, l.b, l.centers, y, 0.7)),
}
NAMES = list(MARGIN)


def setup(name, B=7, C=4, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    loss = MARGIN[name][0](C, D).double()
    with torch.no_grad():
        loss.weight.copy_(torch.randn(loss.weight.shape, generator=g, dtype=DT))
        if name == "CenterLoss":
            loss.b.copy_(torch.randn(C, generator=g, dtype=DT))
            loss.centers.copy_(torch.randn(C, D, generator=g, dtype=DT))
    x = torch.randn(B, D, generator=g, dtype=DT) * 2
    y = torch.randint(0, C, (B,), generator=g)
    return loss, x, y


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_gradients_match_plain_reference(name, seed):
    loss, x, y = setup(name, seed=seed)
    xa = x.clone().requires_grad_(True)
    out = loss(xa, y)
    ga, gw = torch.autograd.grad(out, [xa, loss.weight])
    xb = x.clone().requires_grad_(True)
    Wb = loss.weight.detach().clone().requires_grad_(True)
    ref = MARGIN[name][1](xb, Wb, y, loss)
    gb, gwb = torch.autograd.grad(ref, [xb, Wb])
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gw, gwb, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8])
def test_large_margin_psi_is_cos_m_theta_with_k_and_decreasing(m):
    from ssml_fast.losses.large_margin_softmax_loss import large_margin_psi

    theta = torch.linspace(0, math.pi, 721, dtype=DT)
    ours = large_margin_psi(torch.cos(theta), m)
    ref = torch.stack([psi_large_margin(torch.cos(t), m) for t in theta])
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    assert (ours[1:] <= ours[:-1] + 1e-9).all()  # monotonically decreasing in theta (the point of k)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name):
    loss, x, y = setup(name, B=4, C=3, D=3, seed=3)
    x = x.clone().requires_grad_(True)
    w = loss.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: _with_weight(loss, b, a, y), (x, w), eps=1e-6, atol=1e-6,
                                    fast_mode=True)


def _with_weight(loss, w, x, y):
    """loss(x, y) with weight w (a tensor in the graph) in place of the parameter."""
    name = loss.weight_attr
    saved = loss._parameters.pop(name)
    try:
        loss.__dict__[name] = w  # found before nn.Module's __getattr__, which would look in _parameters
        return loss(x, y)
    finally:
        del loss.__dict__[name]
        loss._parameters[name] = saved


# ---------------------------------------------------------------- PML parity

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
from pytorch_metric_learning import miners as pml_miners, reducers as pml_reducers, regularizers as pml_reg  # noqa: E402


def _pml_pair(name, C, D, kw, seed):
    torch.manual_seed(seed)
    ours = getattr(L, name)(num_classes=C, embedding_size=D, **kw)
    pml = getattr(pml_losses, name)(num_classes=C, embedding_size=D, **kw)
    getattr(pml, ours.weight_attr).data.copy_(ours.weight.data)
    return ours, pml


def _assert_same_with_pml(ours, pml, x, y, indices=None, rtol=1e-5, atol=1e-5):
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = ours(xa, y, indices), pml(xb, y, indices)
    torch.testing.assert_close(la, lb, rtol=rtol, atol=atol)
    (la + 0 * la).backward()
    lb.backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.weight.grad, getattr(pml, ours.weight_attr).grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.get_logits(x), pml.get_logits(x), rtol=1e-5, atol=1e-5)


PML_CONFIGS = {
    "ArcFaceLoss": lambda r: {"margin": float(r.uniform(0, 60)), "scale": float(r.uniform(1, 64))},
    "SubCenterArcFaceLoss": lambda r: {"margin": float(r.uniform(0, 60)), "scale": float(r.uniform(1, 64)),
                                       "sub_centers": int(r.integers(1, 5))},
    "CosFaceLoss": lambda r: {"margin": float(r.uniform(-0.2, 0.8)), "scale": float(r.uniform(1, 64))},
    "LargeMarginSoftmaxLoss": lambda r: {"margin": int(r.integers(1, 7)), "scale": float(r.uniform(0.2, 3))},
    "SphereFaceLoss": lambda r: {"margin": int(r.integers(1, 7)), "scale": float(r.uniform(0.2, 3))},
    "NormalizedSoftmaxLoss": lambda r: {"temperature": float(r.uniform(0.02, 1))},
    "SoftTripleLoss": lambda r: {"centers_per_class": int(r.integers(1, 6)), "la": float(r.uniform(1, 30)),
                                 "gamma": float(r.uniform(0.05, 1)), "margin": float(r.uniform(0, 0.3))},
}


@pytest.mark.parametrize("name", list(PML_CONFIGS))
def test_matches_pml_on_random_configurations(name):
    import numpy as np

    r = np.random.default_rng(12)
    for trial in range(2):
        C, D, B = int(r.integers(2, 12)), int(r.integers(2, 24)), int(r.integers(1, 40))
        ours, pml = _pml_pair(name, C, D, PML_CONFIGS[name](r), seed=trial)
        g = torch.Generator().manual_seed(trial)
        x = torch.randn(B, D, generator=g) * float(r.uniform(0.3, 5))
        y = torch.randint(0, C, (B,), generator=g)
        _assert_same_with_pml(ours, pml, x, y)


@pytest.mark.parametrize("name", list(PML_CONFIGS))
def test_matches_pml_with_miner_reducer_and_weight_regularizer(name):
    C, D, B = 6, 8, 30
    kw = {"weight_regularizer": pml_reg.LpRegularizer(), "weight_reg_weight": 0.3,
          "reducer": pml_reducers.SumReducer()}
    ours, pml = _pml_pair(name, C, D, kw, seed=5)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, D, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    idx = pml_miners.MultiSimilarityMiner(0.1)(x, y)
    assert len(idx[0]) > 0
    _assert_same_with_pml(ours, pml, x, y, idx, rtol=1e-4)
    # the unreduced loss dict, as PML's DoNothingReducer returns it
    ours, pml = _pml_pair(name, C, D, {"reducer": pml_reducers.DoNothingReducer()}, seed=5)
    a, b = ours(x, y), pml(x, y)
    torch.testing.assert_close(a["loss"]["losses"], b["loss"]["losses"], rtol=1e-5, atol=1e-5)


def test_subcenter_get_outliers_matches_pml():
    for seed, threshold in [(0, 75), (1, 60), (2, 89), (3, 180)]:
        ours, pml = _pml_pair("SubCenterArcFaceLoss", 7, 12, {"sub_centers": 4}, seed=seed)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(50, 12, generator=g)
        y = torch.randint(0, 6, (50,), generator=g)  # class 6 absent
        out_a, dom_a = ours.get_outliers(x, y, threshold=threshold)
        out_b, dom_b = pml.get_outliers(x, y, threshold=threshold)
        assert out_a.dtype == torch.long
        assert out_a.tolist() == out_b.long().tolist()
        torch.testing.assert_close(dom_a[:, :6], dom_b[:, :6])
        torch.testing.assert_close(dom_a[:, 6], ours.W[:, 6 * 4])  # absent class: its first sub-centre
        assert torch.equal(ours.get_outliers(x, y, threshold, return_dominant_centers=False), out_a)


def test_pml_signatures_and_defaults():
    import inspect

    for name in PML_CONFIGS:
        ours = inspect.signature(getattr(L, name)).parameters
        pml = inspect.signature(getattr(pml_losses, name).__init__).parameters
        for p, v in pml.items():
            if p in ("self", "args", "kwargs"):
                continue
            assert p in ours and ours[p].default == v.default, (name, p)
        pos = [p for p, v in pml.items() if v.kind == v.POSITIONAL_OR_KEYWORD and p != "self"]
        assert list(ours)[:len(pos)] == pos, name
    a, b = L.SoftTripleLoss(3, 4), pml_losses.SoftTripleLoss(3, 4)
    assert a.fc.shape == b.fc.shape and a.gamma == b.gamma
    assert L.ArcFaceLoss(3, 4).W.shape == (4, 3) and L.ArcFaceLoss(3, 4).margin == pml_losses.ArcFaceLoss(3, 4).margin
    assert L.SubCenterArcFaceLoss(num_classes=3, embedding_size=4).W.shape == (4, 9)
    torch.manual_seed(0)
    w1 = L.SoftTripleLoss(3, 4).fc.detach().clone()
    torch.manual_seed(0)
    assert torch.equal(w1, pml_losses.SoftTripleLoss(3, 4).fc.detach())  # same init, same RNG draws
    torch.manual_seed(0)
    w1 = L.ArcFaceLoss(3, 4).W.detach().clone()
    torch.manual_seed(0)
    assert torch.equal(w1, pml_losses.ArcFaceLoss(3, 4).W.detach())


def test_weight_init_func_is_used():
    loss = L.CosFaceLoss(3, 4, weight_init_func=torch.nn.init.ones_)
    assert torch.equal(loss.W, torch.ones(4, 3))


# ---------------------------------------------------------------- CenterLoss specifics

def test_center_loss_paper_update_is_eq4_and_only_in_training_with_grad():
    loss, x, y = setup("CenterLoss")
    paper = L.CenterLoss(4, 3, lambda_c=0.7, alpha=0.4).double()
    paper.load_state_dict(loss.state_dict())
    assert "centers" not in dict(paper.named_parameters()) and "centers" in paper.state_dict()
    before = paper.centers.clone()
    xg = x.clone().requires_grad_(True)
    out = paper(xg, y)
    torch.testing.assert_close(out, ref_center(x, paper.W, paper.b, before, y, 0.7))  # old centres
    torch.testing.assert_close(paper.centers, ref_center_update(before, x, y, 0.4))
    out.backward()  # gradient reaches the embeddings only: lambda (x - c) / B plus the softmax part
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    moved = paper.centers.clone()
    paper.eval()
    paper(x, y)
    assert torch.equal(paper.centers, moved)
    paper.train()
    with torch.no_grad():
        paper(x, y)
    assert torch.equal(paper.centers, moved)


def test_center_loss_gradient_centres_are_parameters_with_gradients():
    loss, x, y = setup("CenterLoss")
    assert "centers" in dict(loss.named_parameters())
    loss(x, y).backward()
    ref_g = torch.zeros_like(loss.centers)
    for i in range(x.shape[0]):
        ref_g[y[i]] += 0.7 * (loss.centers[y[i]] - x[i]).detach() / x.shape[0]
    torch.testing.assert_close(loss.centers.grad, ref_g)


def test_center_loss_without_bias_and_logits():
    loss = L.CenterLoss(3, 4, bias=False)
    x = torch.randn(5, 4)
    assert loss.b is None
    torch.testing.assert_close(loss.get_logits(x), x @ loss.W)


# ---------------------------------------------------------------- precision, degenerate batches, errors

@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_under_cpu_autocast_is_computed_in_float32(name):
    loss, x, y = setup(name, B=12, C=4, D=8)
    loss = loss.float()
    xb = x.float().bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(xb, y)
        logits = loss.get_logits(xb)
    assert out.dtype == torch.float32 and logits.dtype == torch.float32
    ref = MARGIN[name][0](4, 8)
    ref.load_state_dict(loss.state_dict())
    torch.testing.assert_close(out, ref(xb.detach().float(), y), rtol=1e-5, atol=1e-5)
    out.backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad).all()
    assert loss.weight.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["one_sample", "one_class", "empty", "zero_embedding", "on_a_weight"])
def test_degenerate_batches_are_finite(name, case):
    loss, x, y = setup(name, B=6, C=4, D=3)
    if case == "one_sample":
        x, y = x[:1], y[:1]
    elif case == "one_class":
        y = torch.zeros_like(y)
    elif case == "empty":
        x, y = x[:0], y[:0]
    elif case == "zero_embedding":
        x = x.clone()
        x[0] = 0
    elif case == "on_a_weight":  # cos = 1 exactly: acos' is infinite there
        x = x.clone()
        x[0] = loss.weight_rows()[0].detach()
        y = y.clone()
        y[0] = 0
    x = x.clone().requires_grad_(True)
    out = loss(x, y)
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(loss.weight.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_named(name):
    loss = MARGIN[name][0](4, 3)
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="labels must lie in"):
        loss(x, torch.tensor([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="labels must lie in"):
        loss(x, torch.tensor([0, 1, -1, 3, 0]))
    with pytest.raises(ValueError, match="embedding_size is 3"):
        loss(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="embeddings must be 2-D"):
        loss(torch.randn(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels has 4 entries"):
        loss(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="needs labels"):
        loss(x)
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        loss(x, torch.zeros(5, dtype=torch.long), ref_emb=torch.randn(3, 3), ref_labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="embedding_size is 3"):
        loss.get_logits(torch.randn(2, 5))
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        type(loss)(num_classes=0, embedding_size=3)
    with pytest.raises(TypeError, match="embedding_size must be an int"):
        type(loss)(num_classes=3, embedding_size=2.5)


@pytest.mark.parametrize("build,match", [
    (lambda: L.ArcFaceLoss(3, 4, margin=180), "margin is an angle in degrees"),
    (lambda: L.ArcFaceLoss(3, 4, margin=-1), "margin is an angle in degrees"),
    (lambda: L.ArcFaceLoss(3, 4, margin=float("nan")), "margin must be finite"),
    (lambda: L.ArcFaceLoss(3, 4, scale=0), "scale must be > 0"),
    (lambda: L.CosFaceLoss(3, 4, margin=float("inf")), "margin must be finite"),
    (lambda: L.LargeMarginSoftmaxLoss(3, 4, margin=2.5), "margin must be an integer >= 1"),
    (lambda: L.LargeMarginSoftmaxLoss(3, 4, margin=0), "margin must be an integer >= 1"),
    (lambda: L.SphereFaceLoss(3, 4, margin="4"), "margin must be an integer"),
    (lambda: L.SubCenterArcFaceLoss(3, 4, sub_centers=0), "sub_centers must be >= 1"),
    (lambda: L.NormalizedSoftmaxLoss(3, 4, temperature=0), "temperature must be > 0"),
    (lambda: L.SoftTripleLoss(3, 4, centers_per_class=0), "centers_per_class must be >= 1"),
    (lambda: L.SoftTripleLoss(3, 4, gamma=0), "gamma must be > 0"),
    (lambda: L.SoftTripleLoss(3, 4, la=-1), "la must be >= 0"),
    (lambda: L.CenterLoss(3, 4, alpha=1.5), "alpha must lie in"),
    (lambda: L.CenterLoss(3, 4, lambda_c=-1), "lambda_c must be >= 0"),
    (lambda: L.CenterLoss(3, 4, center_update="sgd"), "center_update must be one of"),
    (lambda: L.ArcFaceLoss(3, 4, weight_init_func=3), "weight_init_func must be callable"),
])
def test_bad_arguments_are_named(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_distance_must_be_what_the_loss_is_defined_on():
    from ssml_fast import distances as Dist
    from pytorch_metric_learning import distances as PD

    with pytest.raises(ValueError, match="distance must be CosineSimilarity"):
        L.ArcFaceLoss(3, 4, distance=Dist.LpDistance())
    with pytest.raises(ValueError, match="needs a similarity"):
        L.SoftTripleLoss(3, 4, distance=Dist.LpDistance())
    L.CosFaceLoss(3, 4, distance=PD.CosineSimilarity())  # PML's own object is fine
    # NormalizedSoftmax with a distance: logits are -d / temperature, as PML
    ours = L.NormalizedSoftmaxLoss(3, 4, distance=Dist.LpDistance())
    pml = pml_losses.NormalizedSoftmaxLoss(3, 4, distance=PD.LpDistance())
    pml.W.data.copy_(ours.W.data)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(ours(x, y), pml(x, y))
