"""Losses: float64 gradcheck, degenerate batches (finite, zero gradient), bad input errors, hypothesis sweeps."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssml_fast import losses as L
from reference import losses as ref

# name -> (factory, call(loss, emb, labels) -> 0-d). Labelled losses use the PML call shape.
LABELLED = {
    "contrastive": lambda: L.ContrastiveLoss(0.1, 1.5),
    "contrastive_hadsell": lambda: L.ContrastiveLoss(form="hadsell", neg_margin=2.0),
    "contrastive_cosine": lambda: L.ContrastiveLoss(form="cosine"),
    "ntxent": lambda: L.NTXentLoss(0.5),
    "multi_similarity": lambda: L.MultiSimilarityLoss(2, 10, 0.5),
    "lifted": lambda: L.LiftedStructureLoss(2.0),
    "lifted_generalized": lambda: L.LiftedStructureLoss(2.0, generalized=True),
    "npair": lambda: L.NPairLoss(),
    "npair_all": lambda: L.NPairLoss(pairs="all"),
    "proxy_nca": lambda: L.ProxyNCALoss(4, 5),
    "proxy_anchor": lambda: L.ProxyAnchorLoss(4, 5, alpha=4.0),
    "smooth_ap": lambda: L.SmoothAPLoss(0.5),
    "histogram": lambda: L.HistogramLoss(10),
    "insclr": lambda: L.InsCLRContrastiveLoss(0.0),
    "triplet": lambda: L.TripletMarginLoss(0.5),
}


def batch(B, n_classes, D=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=dtype), torch.randint(0, n_classes, (B,), generator=g)


def finite_with_zero_or_finite_grad(loss, x, *args, expect_zero_grad=True):
    x = x.clone().requires_grad_(True)
    out = loss(x, *args)
    assert out.dim() == 0 and torch.isfinite(out)
    (g,) = torch.autograd.grad(out, x, allow_unused=True)
    g = torch.zeros_like(x) if g is None else g
    assert torch.isfinite(g).all()
    if expect_zero_grad:
        assert float(out.detach()) == 0.0
        assert torch.count_nonzero(g) == 0
    return out


# ---------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("name", sorted(LABELLED))
def test_gradcheck_labelled(name):
    x, y = batch(8, 3, D=5, seed=1)
    loss = LABELLED[name]().double()
    if name == "histogram":  # piecewise linear in s: keep the finite differences inside one bin
        assert torch.autograd.gradcheck(lambda e: loss(e, y), (x.requires_grad_(),), eps=1e-7, atol=1e-4)
    else:
        assert torch.autograd.gradcheck(lambda e: loss(e, y), (x.requires_grad_(),))


def test_gradcheck_proxies():
    """Gradients w.r.t. the embeddings and the learnable proxies together."""
    x, y = batch(8, 4)
    for loss in (L.ProxyNCALoss(4, 5).double(), L.ProxyNCALoss(4, 5, exclude_positive=True).double(),
                 L.ProxyAnchorLoss(4, 5, alpha=4.0).double()):
        p0 = loss.proxies.detach().clone().requires_grad_(True)
        f = lambda e, p: torch.func.functional_call(loss, {"proxies": p}, (e, y))  # noqa: E731
        assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(), p0))


def test_gradcheck_relaxed_kl():
    # SpreadingLoss is left out on purpose: its gradient (anchor rows only) is not the derivative of
    # its value; test_spreading_gradient_only_through_anchor_rows checks it against the reference.
    x, _ = batch(5, 1)
    xa, _ = batch(5, 1, seed=3)
    w = torch.rand(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(lambda a: L.RelaxedContrastiveLoss(1.5)(a, w), (x.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda a: L.SelfDistillationKL()(a, xa), (x.clone().requires_grad_(),))


def test_spreading_gradient_only_through_anchor_rows():
    """d/dy of log P_ij includes only the row term: perturbing y_j through the detached side does nothing."""
    x, _ = batch(4, 1)
    xa, _ = batch(4, 1, seed=2)
    a = x.clone().requires_grad_(True)
    out = L.SpreadingLoss()(a, xa)
    (g,) = torch.autograd.grad(out, a)
    b = x.clone().requires_grad_(True)
    torch.testing.assert_close(g, torch.autograd.grad(ref.spreading(b, xa), b)[0])


# ---------------------------------------------------------------- degenerate batches

@pytest.mark.parametrize("name", sorted(set(LABELLED) - {"proxy_nca", "proxy_anchor", "insclr"}))
@pytest.mark.parametrize("case", ["one_class", "all_distinct", "single"])
def test_degenerate_batches_are_finite(name, case):
    x, _ = batch(6, 1)
    y = {"one_class": torch.zeros(6, dtype=torch.long), "all_distinct": torch.arange(6),
         "single": torch.zeros(1, dtype=torch.long)}[case]
    x = x[: len(y)]
    loss = LABELLED[name]().double()
    no_pairs_at_all = case == "single" or (case == "all_distinct" and name not in (
        "contrastive", "contrastive_hadsell", "contrastive_cosine", "multi_similarity", "lifted_generalized"))
    no_negatives_matter = case == "one_class" and name in ("ntxent", "npair_all", "histogram", "triplet",
                                                           "lifted")
    finite_with_zero_or_finite_grad(loss, x, y, expect_zero_grad=no_pairs_at_all and name != "lifted_generalized")
    if no_negatives_matter and name != "lifted":
        finite_with_zero_or_finite_grad(loss, x, y, expect_zero_grad=name in ("ntxent", "npair_all", "histogram",
                                                                              "triplet"))


def test_degenerate_special_losses():
    x, _ = batch(1, 1)
    finite_with_zero_or_finite_grad(L.SpreadingLoss(), x, x + 1)
    finite_with_zero_or_finite_grad(L.RelaxedContrastiveLoss(), x, torch.ones(1, 1, dtype=torch.float64))
    finite_with_zero_or_finite_grad(L.SelfDistillationKL(), x, x)
    same = torch.ones(4, 3, dtype=torch.float64)  # all points equal: distances 0, row means 0
    out = finite_with_zero_or_finite_grad(L.RelaxedContrastiveLoss(1.0), same, torch.zeros(4, 4, dtype=torch.float64),
                                          expect_zero_grad=False)
    assert float(out.detach()) == pytest.approx(3.0)  # every pair at relative distance 0 pays delta^2
    y = torch.zeros(1, dtype=torch.long)
    finite_with_zero_or_finite_grad(L.InsCLRContrastiveLoss(), x, y)
    finite_with_zero_or_finite_grad(L.ProxyNCALoss(1, 5, exclude_positive=True).double(), x, y)


def test_empty_indices_tuple_gives_zero():
    x, y = batch(6, 2)
    empty = tuple(torch.empty(0, dtype=torch.long) for _ in range(3))
    for name in ("contrastive", "ntxent", "multi_similarity", "lifted", "npair", "histogram", "insclr"):
        finite_with_zero_or_finite_grad(LABELLED[name]().double(), x, y, empty)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", ["contrastive", "ntxent", "multi_similarity", "lifted", "npair", "smooth_ap",
                                  "histogram", "insclr", "proxy_nca", "proxy_anchor"])
def test_bad_input_names_the_argument(name):
    loss = LABELLED[name]()
    x, y = batch(6, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="embeddings"):
        loss(x[0], y)
    with pytest.raises(TypeError, match="labels"):
        loss(x, y.float())
    with pytest.raises(ValueError, match="labels"):
        loss(x, y[:3])
    with pytest.raises(ValueError, match="indices_tuple"):
        loss(x, y, (torch.tensor([0]), torch.tensor([9]), torch.tensor([1])))


def test_bad_constructor_and_call_arguments():
    with pytest.raises(ValueError, match="form"):
        L.ContrastiveLoss(form="nope")
    with pytest.raises(ValueError, match="temperature"):
        L.NTXentLoss(0.0)
    with pytest.raises(ValueError, match="similarity"):
        L.MultiSimilarityLoss(similarity="l2")
    with pytest.raises(TypeError, match="num_classes"):
        L.ProxyAnchorLoss(3.5, 4)
    with pytest.raises(ValueError, match="labels"):
        L.ProxyNCALoss(3, 5)(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="embedding_size"):
        L.ProxyNCALoss(3, 5)(torch.randn(4, 6), torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="augmented"):
        L.SpreadingLoss()(torch.randn(4, 5), torch.randn(3, 5))
    with pytest.raises(ValueError, match="weights"):
        L.RelaxedContrastiveLoss()(torch.randn(4, 5), torch.rand(3, 4))
    with pytest.raises(ValueError, match="weights"):
        L.RelaxedContrastiveLoss()(torch.randn(4, 5), torch.rand(4, 4) + 1)
    with pytest.raises(ValueError, match="teacher"):
        L.SelfDistillationKL()(torch.randn(4, 5), torch.randn(5, 5))
    with pytest.raises(ValueError, match="n_bins"):
        L.HistogramLoss(0)
    with pytest.raises(ValueError, match="ref_emb"):
        L.NPairLoss()(torch.randn(4, 5), torch.tensor([0, 0, 1, 1]), ref_emb=torch.randn(3, 5),
                      ref_labels=torch.tensor([0, 1, 1]))


# ---------------------------------------------------------------- hypothesis sweeps

labels_st = st.integers(1, 14).flatmap(
    lambda B: st.lists(st.integers(0, 3), min_size=B, max_size=B))


@settings(max_examples=30, deadline=None)
@given(labels=labels_st, seed=st.integers(0, 10_000), D=st.integers(1, 6))
def test_pair_losses_match_reference_on_random_label_patterns(labels, seed, D):
    y = torch.tensor(labels)
    x, _ = batch(len(labels), 1, D=D, seed=seed)
    for ours, plain in [
        (L.ContrastiveLoss(0.1, 1.5, distance="euclidean"), lambda e: ref.contrastive(e, y, pos_margin=0.1, neg_margin=1.5)),
        (L.NTXentLoss(0.5), lambda e: ref.ntxent(e, y, 0.5)),
        (L.MultiSimilarityLoss(2, 10, 0.5), lambda e: ref.multi_similarity(e, y, 2, 10, 0.5)),
        (L.LiftedStructureLoss(2.0, distance="euclidean"), lambda e: ref.lifted(e, y, 2.0)),
        (L.NPairLoss(pairs="all"), lambda e: ref.npair_all(e, y)),
        (L.SmoothAPLoss(0.5), lambda e: ref.smooth_ap(e, y, 0.5)),
        (L.InsCLRContrastiveLoss(0.2), lambda e: ref.insclr(e, y, 0.2)),
    ]:
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        la, lb = ours(a, y), plain(b)
        torch.testing.assert_close(la.detach(), lb.detach(), rtol=1e-6, atol=1e-8)
        ga = torch.autograd.grad(la, a, allow_unused=True)[0]
        gb = torch.autograd.grad(lb, b, allow_unused=True)[0]
        ga = torch.zeros_like(x) if ga is None else ga
        gb = torch.zeros_like(x) if gb is None else gb
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 40), R=st.integers(1, 40), n_classes=st.integers(1, 5), seed=st.integers(0, 10_000),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_ref_emb_shapes_and_dtypes_are_finite(B, R, n_classes, seed, dtype):
    x, y = batch(B, n_classes, D=8, seed=seed, dtype=dtype)
    r, ry = batch(R, n_classes, D=8, seed=seed + 1, dtype=dtype)
    for loss in (L.ContrastiveLoss(), L.NTXentLoss(), L.MultiSimilarityLoss(), L.SmoothAPLoss(),
                 L.InsCLRContrastiveLoss(), L.LiftedStructureLoss(generalized=True)):
        a = x.clone().requires_grad_(True)
        out = loss(a, y, ref_emb=r, ref_labels=ry)
        assert out.dtype == dtype and torch.isfinite(out)
        (g,) = torch.autograd.grad(out, a)
        assert torch.isfinite(g).all()


def test_half_precision_is_computed_in_float32():
    x, y = batch(16, 3, dtype=torch.float32)
    for name in ("contrastive", "ntxent", "multi_similarity", "smooth_ap"):
        loss = LABELLED[name]()
        torch.testing.assert_close(loss(x.half(), y), loss(x.half().float(), y), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(LABELLED))
def test_losses_run_on_every_device(device, name):
    """float32 on `device` (CUDA too when present) agrees with float64 on the CPU."""
    x, y = batch(12, 3, dtype=torch.float64)
    ref_loss = LABELLED[name]().double()
    loss = LABELLED[name]().to(device)
    if hasattr(loss, "proxies"):
        loss.proxies.data.copy_(ref_loss.proxies.data.float())
    expected = ref_loss(x, y)
    got = loss(x.float().to(device), y.to(device))
    assert got.device.type == device.type
    torch.testing.assert_close(got.cpu().double(), expected, rtol=1e-4, atol=1e-5)
