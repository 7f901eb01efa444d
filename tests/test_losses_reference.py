"""Every loss against a plain loop reference written from its formula: values and gradients (float64)."""
import pytest
import torch

from ssml_fast import losses as L
from reference import losses as ref


def batch(B=10, n_classes=3, D=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=dtype), torch.randint(0, n_classes, (B,), generator=g)


def check(ours, plain, *inputs, rtol=1e-7, atol=1e-9):
    """ours(*inputs) and plain(*inputs) agree in value and in the gradient w.r.t. every float input."""
    a = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    b = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    la, lb = ours(*a), plain(*b)
    torch.testing.assert_close(la.detach(), lb.detach(), rtol=rtol, atol=atol)
    fa = [t for t in a if t.requires_grad]
    fb = [t for t in b if t.requires_grad]
    ga = torch.autograd.grad(la, fa, allow_unused=True)
    gb = torch.autograd.grad(lb, fb, allow_unused=True)
    for x, y, t in zip(ga, gb, fa):
        x = torch.zeros_like(t) if x is None else x
        y = torch.zeros_like(t) if y is None else y
        torch.testing.assert_close(x, y, rtol=rtol * 100, atol=atol * 100)


@pytest.mark.parametrize("form,distance", [("margin", "euclidean"), ("margin", "sqeuclidean"),
                                           ("margin", "cosine"), ("hadsell", "euclidean"), ("cosine", "cosine")])
@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean", "sum"])
def test_contrastive(form, distance, reduction):
    x, y = batch()
    pm, nm = {"margin": (0.3, 2.0), "hadsell": (0.0, 2.5), "cosine": (1.0, 0.2)}[form]
    if form == "margin" and distance == "cosine":
        pm, nm = 0.1, 0.9
    loss = L.ContrastiveLoss(pm, nm, distance=distance, form=form, reduction=reduction)
    check(lambda e: loss(e, y),
          lambda e: ref.contrastive(e, y, form, pm, nm, distance, reduction), x)


def test_contrastive_ref_emb_and_indices():
    x, y = batch(8, 3)
    r, ry = batch(6, 3, seed=1)
    loss = L.ContrastiveLoss(0.2, 2.0, distance="euclidean")
    check(lambda e, m: loss(e, y, ref_emb=m, ref_labels=ry),
          lambda e, m: ref.contrastive(e, y, pos_margin=0.2, neg_margin=2.0, ref=m, ref_labels=ry), x, r)
    # mined pairs, one repeated: PML counts it twice
    idx = (torch.tensor([0, 0, 1]), torch.tensor([1, 1, 2]), torch.tensor([3, 4]), torch.tensor([5, 6]))
    pairs = ([(0, 1), (0, 1), (1, 2)], [(3, 5), (4, 6)])
    check(lambda e: loss(e, y, idx),
          lambda e: ref.contrastive(e, y, pos_margin=0.2, neg_margin=2.0, pairs=pairs), x)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_ntxent(n_classes):
    x, y = batch(12, n_classes)
    check(lambda e: L.NTXentLoss(0.2)(e, y), lambda e: ref.ntxent(e, y, 0.2), x)


def test_ntxent_ref_emb():
    x, y = batch(6, 2)
    r, ry = batch(9, 2, seed=3)
    check(lambda e, m: L.InfoNCE(0.5)(e, y, ref_emb=m, ref_labels=ry),
          lambda e, m: ref.ntxent(e, y, 0.5, ref=m, ref_labels=ry), x, r)


def test_multi_similarity():
    x, y = batch(12, 3)
    check(lambda e: L.MultiSimilarityLoss(2, 10, 0.3)(e, y), lambda e: ref.multi_similarity(e, y, 2, 10, 0.3), x)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_lifted(distance):
    x, y = batch(10, 3)
    check(lambda e: L.LiftedStructureLoss(1.5, 0.1, distance)(e, y),
          lambda e: ref.lifted(e, y, 1.5, 0.1, distance), x)
    check(lambda e: L.LiftedStructureLoss(1.5, 0.1, distance, generalized=True)(e, y),
          lambda e: ref.lifted_generalized(e, y, 1.5, 0.1, distance), x)


def test_npair():
    x, y = batch(12, 4)
    check(lambda e: L.NPairLoss()(e, y), lambda e: ref.npair_one_per_class(e, y), x)
    check(lambda e: L.NPairLoss(pairs="all")(e, y), lambda e: ref.npair_all(e, y), x)


@pytest.mark.parametrize("exclude_positive", [False, True])
def test_proxy_nca(exclude_positive):
    x, y = batch(10, 4)
    loss = L.ProxyNCALoss(4, 5, softmax_scale=3.0, exclude_positive=exclude_positive).double()
    proxies = loss.proxies.detach().clone()
    xe = x.clone().requires_grad_(True)
    ours_val = loss(xe, y)
    plain = ref.proxy_nca(x.clone().requires_grad_(True), y, proxies, 3.0, exclude_positive)
    torch.testing.assert_close(ours_val.detach(), plain.detach())
    # gradients w.r.t. embeddings and proxies
    ours_val.backward()
    xr, pr = x.clone().requires_grad_(True), proxies.clone().requires_grad_(True)
    ref.proxy_nca(xr, y, pr, 3.0, exclude_positive).backward()
    torch.testing.assert_close(xe.grad, xr.grad)
    torch.testing.assert_close(loss.proxies.grad, pr.grad)


def test_proxy_anchor():
    x, y = batch(10, 5)
    y[y == 4] = 0  # class 4 has no sample: its proxy only has a negative term
    loss = L.ProxyAnchorLoss(5, 5, margin=0.1, alpha=8.0).double()
    xe = x.clone().requires_grad_(True)
    out = loss(xe, y)
    out.backward()
    xr, pr = x.clone().requires_grad_(True), loss.proxies.detach().clone().requires_grad_(True)
    plain = ref.proxy_anchor(xr, y, pr, 0.1, 8.0)
    plain.backward()
    torch.testing.assert_close(out.detach(), plain.detach())
    torch.testing.assert_close(xe.grad, xr.grad)
    torch.testing.assert_close(loss.proxies.grad, pr.grad)


@pytest.mark.parametrize("include_query", [False, True])
def test_smooth_ap(include_query):
    x, y = batch(9, 3)
    check(lambda e: L.SmoothAPLoss(0.1, include_query)(e, y), lambda e: ref.smooth_ap(e, y, 0.1, include_query), x)


def test_histogram():
    x, y = batch(10, 3)
    check(lambda e: L.HistogramLoss(n_bins=10)(e, y), lambda e: ref.histogram(e, y, 10), x)


def test_spreading():
    x, _ = batch(5)
    xa = x + 0.3 * batch(5, seed=7)[0]
    check(lambda a, b: L.SpreadingLoss(0.1)(a, b), lambda a, b: ref.spreading(a, b, 0.1), x, xa)


def test_relaxed_contrastive():
    x, _ = batch(7)
    w = torch.rand(7, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    check(lambda e: L.RelaxedContrastiveLoss(1.0)(e, w), lambda e: ref.relaxed_contrastive(e, w, 1.0), x)
    check(lambda e: L.RelaxedContrastiveLoss(0.5)(e, w), lambda e: ref.relaxed_contrastive(e, w, 0.5), x)


def test_self_distillation_kl():
    f, _ = batch(7, D=4)
    g, _ = batch(7, D=9, seed=5)
    check(lambda a, b: L.SelfDistillationKL()(a, b), lambda a, b: ref.self_distillation_kl(a, b), f, g)
    # the teacher gets no gradient
    gt = g.clone().requires_grad_(True)
    out = L.SelfDistillationKL()(f.clone().requires_grad_(True), gt)
    assert torch.autograd.grad(out, gt, allow_unused=True)[0] is None


def test_insclr():
    x, y = batch(10, 3)
    check(lambda e: L.InsCLRContrastiveLoss(0.1)(e, y), lambda e: ref.insclr(e, y, 0.1), x)
    r, ry = batch(7, 3, seed=4)
    check(lambda e, m: L.InsCLRContrastiveLoss(-0.2)(e, y, ref_emb=m, ref_labels=ry),
          lambda e, m: ref.insclr(e, y, -0.2, ref=m, ref_labels=ry), x, r)


def test_self_distillation_kl_from_distances_matches_embeddings_call():
    f, _ = batch(6, D=4)
    g, _ = batch(6, D=7, seed=3)
    kl = L.SelfDistillationKL()
    torch.testing.assert_close(kl(f, g), kl.from_distances(L.relative_distance(f), L.relative_distance(g)))
    with pytest.raises(ValueError, match="teacher_dist"):
        kl.from_distances(torch.rand(4, 4), torch.rand(5, 5))
