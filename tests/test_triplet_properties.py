"""Hypothesis sweeps: batch sizes, label layouts, ties and margins against the brute force."""
import torch
from hypothesis import given, settings, strategies as st

from ssml_fast import ops
from reference.triplet import brute_force_triplet_loss


@st.composite
def batches(draw):
    B = draw(st.integers(1, 28))
    n_classes = draw(st.integers(1, max(1, B)))
    labels = torch.tensor(draw(st.lists(st.integers(0, n_classes - 1), min_size=B, max_size=B)))
    D = draw(st.integers(1, 4))
    if draw(st.booleans()):  # integer grid: exact ties between distances
        emb = torch.tensor(draw(st.lists(st.integers(-2, 2), min_size=B * D, max_size=B * D)), dtype=torch.float64)
    else:
        seed = draw(st.integers(0, 2**31 - 1))
        emb = torch.randn(B * D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return emb.view(B, D), labels


@settings(max_examples=120, deadline=None)
@given(batches(), st.sampled_from(["all", "hard", "semihard"]), st.sampled_from([0.0, 0.1, 1.0, 5.0]),
       st.sampled_from(["mean_nonzero", "mean", "sum"]), st.sampled_from(["sqeuclidean", "cosine", "euclidean"]))
def test_values_and_counts_match_brute_force(batch, mining, margin, reduction, distance):
    emb, labels = batch
    out = ops.triplet_margin_loss(emb, labels, margin, mining, distance, reduction, return_stats=True)
    loss, n_active, n_trip = brute_force_triplet_loss(emb, labels, margin, mining, distance, reduction)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, loss, rtol=1e-9, atol=1e-9)
    assert (int(out.num_active), int(out.num_triplets)) == (n_active, n_trip)


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(["all", "hard", "semihard"]), st.sampled_from([0.0, 0.5, 2.0]))
def test_gradients_match_brute_force(batch, mining, margin):
    emb, labels = batch
    # Squared euclidean is smooth at coincident points, so integer-grid duplicates are fine here.
    x = emb.clone().requires_grad_(True)
    ops.triplet_margin_loss(x, labels, margin, mining, "sqeuclidean").backward()
    xr = emb.clone().requires_grad_(True)
    loss, _, _ = brute_force_triplet_loss(xr, labels, margin, mining, "sqeuclidean")
    loss.backward()
    gr = xr.grad if xr.grad is not None else torch.zeros_like(xr)
    torch.testing.assert_close(x.grad, gr, rtol=1e-8, atol=1e-9)
