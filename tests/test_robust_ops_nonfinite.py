"""NaN / inf propagation and huge scales through the distance, triplet and bank ops (issue 16), against the
plain coordinate formula sqrt(sum((x - y)^2)) evaluated in float64."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from ssml_fast import ops
from ssml_fast.ops import bank_momentum_update_

DISTANCES = ["euclidean", "sqeuclidean", "cosine"]
fused_op = torch.ops.ssml_fast.triplet_margin_loss_from_dist
sorted_op = torch.ops.ssml_fast._triplet_margin_loss_from_dist_sorted


def plain(x, y, distance):
    """The textbook formula in float64 (no GEMM, no clamp), cast back: NaN / inf exactly where it gives them."""
    x64, y64 = x.double(), y.double()
    if distance == "cosine":
        return (1 - F.normalize(x64, dim=1) @ F.normalize(y64, dim=1).T).to(x.dtype)
    d2 = ((x64[:, None, :] - y64[None, :, :]) ** 2).sum(-1)
    return (d2.sqrt() if distance == "euclidean" else d2).to(x.dtype)


def assert_like_plain(got, want, rtol):
    assert torch.equal(torch.isnan(got), torch.isnan(want)), "NaN pattern differs"
    assert torch.equal(torch.isinf(got), torch.isinf(want)), "inf pattern differs"
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite].double(), want[finite].double(), rtol=rtol, atol=1e-5)


def rows_with(values, seed=0, B=7, D=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype)
    for i, v in enumerate(values):
        x[i, i % D] = v
    return x


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_and_inf_rows_match_the_plain_formula(distance, dtype):
    x = rows_with([float("nan"), float("inf"), -float("inf")], dtype=dtype)
    y = rows_with([float("inf"), 0.0, float("nan")], seed=1, B=6, dtype=dtype)
    assert_like_plain(ops.pairwise_distance(x, y, distance), plain(x, y, distance), rtol=1e-5)
    # y is x: the pinned diagonal keeps a NaN row's NaN (x_i - x_i is NaN there) and is 0 elsewhere.
    d = ops.pairwise_distance(x, distance=distance)
    assert_like_plain(d, plain(x, x, distance), rtol=1e-5)
    assert (d.diagonal()[3:] == 0).all()


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("scale", [1e19, 1e25, 1e30, 1e36])
def test_huge_float32_rows_keep_their_true_distance(distance, scale):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 16, generator=g, dtype=torch.float64)
    x[:4] *= scale  # huge rows beside ordinary ones
    y = torch.randn(7, 16, generator=g, dtype=torch.float64)
    y[2:4] *= scale
    x32, y32 = x.float(), y.float()
    got = ops.pairwise_distance(x32, y32, distance)
    want = plain(x32, y32, distance)
    assert_like_plain(got, want, rtol=1e-4)
    big = want.abs() > 1
    assert (got[big] != 0).all()


def test_gemm_path_untouched_for_ordinary_inputs():
    # The rows that need the direct formula are found from their norms: ordinary input keeps the GEMM
    # form's exact numbers (x @ y.T based), so the existing parity with PML is unaffected.
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 32, generator=g), torch.randn(30, 32, generator=g)
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * x @ y.T
    torch.testing.assert_close(ops.pairwise_distance(x, y, "sqeuclidean"), sq.clamp_min(0), rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([float("nan"), float("inf"), -float("inf"), 3e19, -1e30, 0.0]), max_size=4),
       st.sampled_from(DISTANCES), st.integers(0, 1000))
def test_property_like_plain(values, distance, seed):
    x = rows_with(values, seed=seed, B=5, D=3)
    y = rows_with(values[::-1], seed=seed + 1, B=4, D=3)
    assert_like_plain(ops.pairwise_distance(x, y, distance), plain(x, y, distance), rtol=1e-4)


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean"])
def test_nan_reaches_the_gradient(distance):
    x = rows_with([float("nan")], B=5).requires_grad_(True)
    ops.pairwise_distance(x, distance=distance).sum().backward()
    assert torch.isnan(x.grad).any()


# ---- triplet mining: a NaN distance makes its anchor's loss NaN, on both algorithms ----

def batch(B=16, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, generator=g, dtype=torch.float64)
    return x, torch.randint(0, C, (B,), generator=g)


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean", "sum"])
@pytest.mark.parametrize("soft", [False, True])
def test_nan_distance_poisons_its_anchor(mining, reduction, soft):
    if soft and mining == "all":
        pytest.skip("soft margin is for hard / semihard")
    x, labels = batch()
    labels[:2] = torch.tensor([0, 0])  # anchor 0 has a positive (1) and negatives
    dist = ops.pairwise_distance(x, x).clone()
    dist[0, 5] = float("nan")
    outs = []
    for op in (fused_op, sorted_op):
        loss, active, total, grad = op(dist, labels, labels, True, 0.3, mining, reduction, soft)
        assert torch.isnan(loss), (op, mining)
        assert torch.isnan(grad[0, 1:]).all() and not torch.isnan(grad[1:]).any()
        outs.append((int(active), int(total), grad))
    assert outs[0][:2] == outs[1][:2]
    assert torch.equal(torch.isnan(outs[0][2]), torch.isnan(outs[1][2]))
    finite = ~torch.isnan(outs[0][2])
    torch.testing.assert_close(outs[0][2][finite], outs[1][2][finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
def test_nan_embedding_gives_nan_loss(mining):
    x, labels = batch(seed=1)
    x[3, 1] = float("nan")
    for distance in DISTANCES:
        assert torch.isnan(ops.triplet_margin_loss(x, labels, 0.2, mining, distance))
        assert torch.isnan(ops.triplet_margin_loss(x.float(), labels, 0.2, mining, distance))


def test_nan_only_where_no_triplet_exists_is_ignored():
    # An anchor without a positive has no triplet: its NaN distances do not matter (the plain formula sums
    # over no triplet there), and the diagonal is never a candidate.
    x, _ = batch(6)
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    dist = ops.pairwise_distance(x, x).clone()
    dist[0, 3] = float("nan")
    dist[1, 1] = float("nan")
    for mining in ["all", "hard", "semihard"]:
        for op in (fused_op, sorted_op):
            loss = op(dist, labels, labels, True, 0.3, mining, "sum", False)[0]
            assert torch.isfinite(loss)


# ---- memory bank ----

def test_nan_feature_writes_an_all_nan_slot():
    bank = F.normalize(torch.randn(6, 4), dim=1)
    feats = torch.randn(2, 4)
    feats[0, 2] = float("nan")
    bank_momentum_update_(bank, torch.tensor([1, 4]), feats, 0.5)
    assert torch.isnan(bank[1]).all() and torch.isfinite(bank[4]).all()
    ref = F.normalize(0.5 * torch.randn(4) + float("nan"), dim=0)  # F.normalize of a NaN row: all NaN
    assert torch.isnan(ref).all()


def test_aliased_features_are_read_before_the_bank_is_written():
    g = torch.Generator().manual_seed(4)
    bank = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    ids = torch.tensor([1, 2, 3, 0])
    expected = bank.clone()
    bank_momentum_update_(expected, ids, bank[0:4].clone(), 0.3)
    bank_momentum_update_(bank, ids, bank[0:4], 0.3)  # feats is a view of the bank
    assert torch.equal(bank, expected)
    # Through the op directly as well.
    bank2 = expected.clone()
    ref = bank2.clone()
    bank_momentum_update_(ref, ids, bank2[4:8].clone(), 0.6)
    torch.ops.ssml_fast.bank_momentum_update_(bank2, ids, bank2[4:8], 0.6)
    assert torch.equal(bank2, ref)
