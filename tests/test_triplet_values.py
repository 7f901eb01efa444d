"""triplet_margin_loss against the explicit-triplet brute force: values, counts and gradients."""
import itertools

import pytest
import torch

from ssml_fast import ops
from reference.triplet import brute_force_triplet_loss

MININGS = ["all", "hard", "semihard"]
DISTANCES = ["euclidean", "sqeuclidean", "cosine"]
REDUCTIONS = ["mean_nonzero", "mean", "sum"]


def make_batch(B, n_classes, D=6, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, generator=g, dtype=dtype)
    labels = torch.randint(0, n_classes, (B,), generator=g)
    return emb.to(device), labels.to(device)


def check_against_brute(emb, labels, rtol=1e-7, atol=1e-9, **kw):
    x = emb.detach().clone().requires_grad_(True)
    out = ops.triplet_margin_loss(x, labels, return_stats=True, **kw)
    (g,) = torch.autograd.grad(out.loss, x)
    xr = emb.detach().cpu().clone().requires_grad_(True)
    ref_kw = dict(kw)
    if "ref_emb" in kw:
        ref_kw["ref_emb"] = kw["ref_emb"].detach().cpu()
        ref_kw["ref_labels"] = kw["ref_labels"].cpu()
    loss, n_active, n_trip = brute_force_triplet_loss(xr, labels.cpu(), **ref_kw)
    (gr,) = torch.autograd.grad(loss, xr, allow_unused=True)
    gr = torch.zeros_like(xr) if gr is None else gr
    torch.testing.assert_close(out.loss.cpu(), loss.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(g.cpu(), gr, rtol=rtol * 10, atol=atol * 10)
    assert int(out.num_active) == n_active
    assert int(out.num_triplets) == n_trip


@pytest.mark.parametrize("mining,distance,reduction", list(itertools.product(MININGS, DISTANCES, REDUCTIONS)))
def test_matches_brute_force(mining, distance, reduction, device):
    emb, labels = make_batch(24, 4, device=device)
    check_against_brute(emb, labels, margin=0.3 if distance == "cosine" else 1.0, mining=mining,
                        distance=distance, reduction=reduction)


@pytest.mark.parametrize("mining,distance", list(itertools.product(MININGS, DISTANCES)))
def test_reference_set(mining, distance, device):
    emb, labels = make_batch(10, 3, seed=1, device=device)
    ref, ref_labels = make_batch(17, 4, seed=2, device=device)
    check_against_brute(emb, labels, margin=0.5, mining=mining, distance=distance,
                        ref_emb=ref, ref_labels=ref_labels)


def test_reference_gradient_reaches_ref_emb(device):
    emb, labels = make_batch(8, 2, device=device)
    ref, ref_labels = make_batch(12, 2, seed=3, device=device)
    ref.requires_grad_(True)
    loss = ops.triplet_margin_loss(emb, labels, margin=5.0, ref_emb=ref, ref_labels=ref_labels)
    (g,) = torch.autograd.grad(loss, ref)
    ref_d = ref.detach().cpu().requires_grad_(True)
    loss_b, _, _ = brute_force_triplet_loss(emb.cpu(), labels.cpu(), margin=5.0, ref_emb=ref_d,
                                            ref_labels=ref_labels.cpu())
    (gb,) = torch.autograd.grad(loss_b, ref_d)
    torch.testing.assert_close(g.cpu(), gb)


def test_ref_emb_is_emb_excludes_self_pairs():
    emb, labels = make_batch(16, 3)
    a = ops.triplet_margin_loss(emb, labels, margin=1.0)
    b = ops.triplet_margin_loss(emb, labels, margin=1.0, ref_emb=emb, ref_labels=labels)
    assert torch.equal(a, b)


@pytest.mark.parametrize("mining", ["hard", "semihard"])
def test_soft_margin(mining):
    emb, labels = make_batch(20, 3, seed=4)
    check_against_brute(emb, labels, margin=0.0, mining=mining, soft=True)
    check_against_brute(emb, labels, margin=0.4, mining=mining, soft=True, reduction="mean")


def test_large_positive_sets_use_sorted_path():
    # Two classes: every anchor has ~B/2 positives, beyond the direct-scan threshold.
    emb, labels = make_batch(90, 2, seed=5)
    for mining, reduction in itertools.product(MININGS, REDUCTIONS):
        check_against_brute(emb, labels, margin=0.7, mining=mining, reduction=reduction)


def test_ties_on_integer_grid():
    # Small integer coordinates make many distances exactly equal; GEMM distances are exact here.
    g = torch.Generator().manual_seed(6)
    emb = torch.randint(-1, 2, (30, 3), generator=g).double()
    labels = torch.randint(0, 3, (30,), generator=g)
    for mining, reduction in itertools.product(MININGS, REDUCTIONS):
        # Squared euclidean: differentiable at 0, so duplicate rows do not make the reference NaN.
        check_against_brute(emb, labels, margin=1.0, mining=mining, distance="sqeuclidean", reduction=reduction)


def test_float32_matches_float64():
    emb, labels = make_batch(64, 8, D=16, seed=7)
    for mining in MININGS:
        l64 = ops.triplet_margin_loss(emb, labels, margin=0.5, mining=mining)
        l32 = ops.triplet_margin_loss(emb.float(), labels, margin=0.5, mining=mining)
        assert l32.dtype == torch.float32
        torch.testing.assert_close(l32.double(), l64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(dtype):
    emb, labels = make_batch(32, 4, D=8, seed=8)
    x = emb.to(dtype).requires_grad_(True)
    loss = ops.triplet_margin_loss(x, labels, margin=0.5)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    ref = ops.triplet_margin_loss(emb.to(dtype).float(), labels, margin=0.5)
    torch.testing.assert_close(loss, ref)


def test_int32_labels(device):
    emb, labels = make_batch(12, 3, device=device)
    a = ops.triplet_margin_loss(emb, labels)
    b = ops.triplet_margin_loss(emb, labels.int())
    assert torch.equal(a, b)
