"""The CUDA backend's triplet algorithm (host orchestration + per-entry kernel bodies), executed on the
CPU through the private op _triplet_margin_loss_from_dist_sorted, against the CPU kernel and the brute
force. This is how a machine without a GPU tests the GPU code path; only launch configuration, the
block reduction's thread layout and atomics remain GPU-only."""
import itertools

import torch
from hypothesis import given, settings, strategies as st

from ssml_fast import ops
from reference.triplet import brute_force_triplet_loss

sorted_op = torch.ops.ssml_fast._triplet_margin_loss_from_dist_sorted
fused_op = torch.ops.ssml_fast.triplet_margin_loss_from_dist


def both(dist, labels, ref_labels, exclude, margin, mining, reduction, soft=False):
    args = (dist, labels, ref_labels, exclude, margin, mining, reduction, soft)
    return fused_op(*args), sorted_op(*args)


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-12)
    assert int(a[1]) == int(b[1]) and int(a[2]) == int(b[2])
    torch.testing.assert_close(a[3], b[3], rtol=1e-12, atol=1e-12)


def test_every_mining_and_reduction_matches_cpu_kernel():
    g = torch.Generator().manual_seed(0)
    for B, C in [(60, 2), (60, 15), (33, 33), (1, 1)]:
        x = torch.randn(B, 4, generator=g, dtype=torch.float64)
        labels = torch.randint(0, C, (B,), generator=g)
        dist = ops.pairwise_distance(x, x)
        for mining, reduction, margin in itertools.product(["all", "hard", "semihard"],
                                                           ["mean_nonzero", "mean", "sum"], [0.0, 0.4, 3.0]):
            assert_same(*both(dist, labels, labels, True, margin, mining, reduction))


def test_reference_set_and_soft_margin():
    g = torch.Generator().manual_seed(1)
    x, r = torch.randn(20, 3, generator=g), torch.randn(45, 3, generator=g)
    lx, lr = torch.randint(0, 4, (20,), generator=g), torch.randint(0, 4, (45,), generator=g)
    dist = ops.pairwise_distance(x, r)
    for mining in ["all", "hard", "semihard"]:
        assert_same(*both(dist, lx, lr, False, 0.5, mining, "mean"))
    for mining in ["hard", "semihard"]:
        assert_same(*both(dist, lx, lr, False, 0.2, mining, "mean_nonzero", soft=True))


def test_ties_pick_the_same_columns():
    # Integer grid: many equal distances; the hardest positive / nearest farther negative must be the
    # lower column in both algorithms, so the gradients are identical, not just the values.
    g = torch.Generator().manual_seed(2)
    x = torch.randint(-1, 2, (40, 2), generator=g).float()
    labels = torch.randint(0, 3, (40,), generator=g)
    dist = ops.pairwise_distance(x, x, "sqeuclidean")
    for mining in ["hard", "semihard"]:
        assert_same(*both(dist, labels, labels, True, 1.0, mining, "sum"))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 6), st.sampled_from(["all", "hard", "semihard"]),
       st.sampled_from([0.0, 0.3, 2.0]), st.integers(0, 2**31 - 1), st.booleans())
def test_matches_brute_force(B, C, mining, margin, seed, grid):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (B, 2), generator=g).double() if grid else torch.randn(B, 3, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    dist = ops.pairwise_distance(x, x, "sqeuclidean")
    loss, active, total, _ = sorted_op(dist, labels, labels, True, margin, mining, "mean_nonzero", False)
    ref, ref_active, ref_total = brute_force_triplet_loss(x, labels, margin, mining, "sqeuclidean")
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-9)
    assert (int(active), int(total)) == (ref_active, ref_total)


def test_rows_beyond_one_chunk_match_cpu_kernel():
    # 2100 x 2100 > 2^22 entries: the sorted algorithm processes two chunks of rows (row offsets, the diagonal
    # rule and the per-chunk sums must carry over); NaN in a second-chunk row too.
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2100, 4, generator=g)
    labels = torch.randint(0, 30, (2100,), generator=g)
    dist = ops.pairwise_distance(x, x).clone()
    for mining in ["all", "hard", "semihard"]:
        a, b = both(dist, labels, labels, True, 0.3, mining, "mean")
        assert_same(a, b)
    dist[2050, 7] = float("nan")
    for mining in ["all", "hard", "semihard"]:
        a, b = both(dist, labels, labels, True, 0.3, mining, "sum", soft=mining != "all")
        assert torch.isnan(a[0]) and torch.isnan(b[0])
        assert int(a[1]) == int(b[1]) and int(a[2]) == int(b[2])
        assert torch.equal(torch.isnan(a[3]), torch.isnan(b[3]))
        keep = ~torch.isnan(a[3])
        assert torch.equal(a[3][keep], b[3][keep])
