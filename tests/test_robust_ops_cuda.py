"""The CUDA paths of issue 16 (compiled here, run on a GPU only; every test skips without one):
determinism, symmetry, device checks at the op boundary, full float32 GEMMs, non-finite propagation."""
import pytest
import torch
import torch.nn.functional as F

import ssml_fast
from ssml_fast import ops
from ssml_fast.ops import bank_momentum_update_, contextual_similarity, kreciprocal_rerank

from conftest import requires_cuda

pytestmark = requires_cuda


def batch(B=200, C=20, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randint(0, C, (B,), generator=g)


@pytest.mark.parametrize("soft", [False, True])
def test_semihard_is_deterministic(soft):
    x, labels = batch(512, 4)
    dist = torch.cdist(x, x).cuda()
    runs = [torch.ops.ssml_fast.triplet_margin_loss_from_dist(dist, labels.cuda(), labels.cuda(), True, 0.5,
                                                              "semihard", "sum", soft) for _ in range(3)]
    for r in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, runs[0]))


def test_triplet_rows_beyond_one_chunk():
    # More than 2^22 entries: the host processes rows in chunks; the result must not depend on it.
    x, labels = batch(2500, 50, D=8)
    dist = torch.cdist(x, x)
    for mining in ["all", "hard", "semihard"]:
        cpu = torch.ops.ssml_fast.triplet_margin_loss_from_dist(dist, labels, labels, True, 0.2, mining, "mean", False)
        gpu = torch.ops.ssml_fast.triplet_margin_loss_from_dist(dist.cuda(), labels.cuda(), labels.cuda(), True, 0.2,
                                                                mining, "mean", False)
        assert (int(cpu[1]), int(cpu[2])) == (int(gpu[1]), int(gpu[2]))
        assert torch.equal(cpu[3], gpu[3].cpu())


def test_contextual_similarity_exactly_symmetric():
    x, _ = batch(300, D=32)
    for k in (5, 40, 200):
        w, w_p, w_c = contextual_similarity(x.cuda(), k, return_parts=True)
        for m in (w, w_p, w_c):
            assert torch.equal(m, m.T)


def test_device_mismatch_raises_at_the_op_boundary():
    x, labels = batch()
    dist = torch.cdist(x, x).cuda()
    with pytest.raises(ValueError, match="device"):
        torch.ops.ssml_fast.triplet_margin_loss_from_dist(dist, labels, labels.cuda(), True, 0.2, "all", "mean", False)
    with pytest.raises(ValueError):
        torch.ops.ssml_fast.pairwise_distance(x.cuda(), x, "euclidean")
    with pytest.raises(ValueError):
        torch.ops.ssml_fast.contextual_similarity(x.cuda(), 5, 1.0, torch.arange(200))
    with pytest.raises(ValueError):
        torch.ops.ssml_fast.kreciprocal_rerank(x[:10].cuda(), x[10:], 5, 2, 0.3)
    bank = F.normalize(torch.randn(10, 16), dim=1).cuda()
    with pytest.raises(ValueError):
        torch.ops.ssml_fast.bank_momentum_update_(bank, torch.tensor([1]), torch.randn(1, 16).cuda(), 0.5)
    torch.cuda.synchronize()  # the context is still usable


def test_bank_ids_out_of_range_raise_on_cuda():
    bank = F.normalize(torch.randn(10, 4), dim=1).cuda()
    with pytest.raises(ValueError, match="ids"):
        bank_momentum_update_(bank, torch.tensor([3, 10]).cuda(), torch.randn(2, 4).cuda(), 0.5)


def test_tf32_does_not_reach_the_distances():
    x, _ = batch(512, D=256)
    x = x.cuda()
    want = ops.pairwise_distance(x, x[:100])
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        got = ops.pairwise_distance(x, x[:100])
        assert torch.backends.cuda.matmul.allow_tf32  # the user's setting is restored
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    assert torch.equal(got, want)


def test_nan_and_huge_rows_on_cuda_like_cpu():
    x, labels = batch(40, 4)
    x[3, 2] = float("nan")
    x[7] *= 1e25
    for distance in ["euclidean", "sqeuclidean", "cosine"]:
        cpu = ops.pairwise_distance(x, distance=distance)
        gpu = ops.pairwise_distance(x.cuda(), distance=distance).cpu()
        assert torch.equal(torch.isnan(cpu), torch.isnan(gpu))
        finite = torch.isfinite(cpu)
        torch.testing.assert_close(gpu[finite], cpu[finite], rtol=1e-4, atol=1e-4)
    assert torch.isnan(ops.triplet_margin_loss(x.cuda(), labels.cuda(), 0.2, "hard"))


def test_rerank_scale_and_collapse_on_cuda():
    x, _ = batch(80, D=8)
    want = kreciprocal_rerank(x[:20].cuda(), x[20:].cuda())
    xs = x * 2.0 ** 70
    assert torch.equal(kreciprocal_rerank(xs[:20].cuda(), xs[20:].cuda()), want)
    c = torch.full((30, 8), 0.5).cuda()
    assert torch.equal(kreciprocal_rerank(c[:5], c[5:]), torch.zeros(5, 25, device="cuda"))


def test_build_has_ptx_and_common_archs():
    archs = ssml_fast.build_info()["cuda_archs"]
    for a in ("7.5", "8.0", "9.0", "PTX"):
        assert a in archs
