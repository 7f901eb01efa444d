"""Every fused op inside torch.autocast (issue 16): floating inputs are cast to float32, the op runs with
autocast off and returns float32, equal to the op on the same values outside autocast."""
import pytest
import torch
import torch.nn.functional as F

from ssml_fast import ops
from ssml_fast.ops import (bank_momentum_update_, contextual_similarity, kreciprocal_rerank, queue_enqueue_,
                           topk_neighbors, triplet_margin_loss)
from ssml_fast.ops._autocast import FUNCTIONAL_OPS

from conftest import requires_cuda

AMP = {"cpu": torch.bfloat16, "cuda": torch.float16}


def amp_devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def features(n=24, d=8, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g).to(device), torch.randint(0, 4, (n,), generator=g).to(device)


def half_features(device, n=24, d=8, seed=0):
    """What a model's last layer hands the op under autocast: a half-precision tensor."""
    x, labels = features(n, d, seed, device)
    lin = torch.nn.Linear(d, d).to(device)
    with torch.autocast(device, dtype=AMP[device]):
        h = lin(x)
    assert h.dtype == AMP[device]
    return h, labels


def test_every_functional_op_has_an_autocast_rule():
    for name in FUNCTIONAL_OPS:
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ssml_fast::{name}", key), (name, key)


@pytest.mark.parametrize("device", amp_devices())
@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
def test_pairwise_distance(device, distance):
    h, _ = half_features(device)
    x = h.detach().float().requires_grad_(True)
    want = ops.pairwise_distance(x, x[5:], distance)
    want.sum().backward()
    xa = h.detach().float().requires_grad_(True)
    with torch.autocast(device, dtype=AMP[device]):
        got = ops.pairwise_distance(xa, xa[5:], distance)
        got_half = ops.pairwise_distance(h, distance=distance)
        got_op = torch.ops.ssml_fast.pairwise_distance(xa, xa[5:], distance)
    got.sum().backward()
    assert got.dtype == got_half.dtype == got_op.dtype == torch.float32
    assert torch.equal(got, want) and torch.equal(got_op, want)
    assert torch.equal(xa.grad, x.grad)
    assert torch.equal(got_half, ops.pairwise_distance(h.float(), distance=distance))


@pytest.mark.parametrize("device", amp_devices())
@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
def test_triplet_margin_loss(device, mining):
    h, labels = half_features(device)
    x = h.detach().float().requires_grad_(True)
    want = triplet_margin_loss(x, labels, 0.3, mining)
    want.backward()
    xa = h.detach().float().requires_grad_(True)
    with torch.autocast(device, dtype=AMP[device]):
        got = triplet_margin_loss(xa, labels, 0.3, mining)
        got_half = triplet_margin_loss(h, labels, 0.3, mining)
    got.backward()
    assert got.dtype == got_half.dtype == torch.float32
    assert torch.equal(got, want) and torch.equal(got_half, want)
    assert torch.equal(xa.grad, x.grad)


def test_triplet_op_and_gpu_algorithm_under_autocast():
    x, labels = features()
    dist = ops.pairwise_distance(x, x)
    for op in (torch.ops.ssml_fast.triplet_margin_loss_from_dist, torch.ops.ssml_fast._triplet_margin_loss_from_dist_sorted):
        want = op(dist, labels, labels, True, 0.2, "all", "mean", False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = op(dist.bfloat16(), labels, labels, True, 0.2, "all", "mean", False)
            same = op(dist, labels, labels, True, 0.2, "all", "mean", False)
        assert got[0].dtype == torch.float32 and torch.equal(same[0], want[0])
        assert torch.equal(got[0], op(dist.bfloat16().float(), labels, labels, True, 0.2, "all", "mean", False)[0])


@pytest.mark.parametrize("device", amp_devices())
def test_contextual_similarity(device):
    h, _ = half_features(device, n=30)
    ids = torch.arange(30, device=device) // 2
    want = contextual_similarity(h.float(), 6, ids=ids, return_parts=True)
    with torch.autocast(device, dtype=AMP[device]):
        got = contextual_similarity(h, 6, ids=ids, return_parts=True)
        got32 = contextual_similarity(h.float(), 6, ids=ids, return_parts=True)
    for a, b, c in zip(got, want, got32):
        assert a.dtype == torch.float32 and torch.equal(a, b) and torch.equal(c, b)


@pytest.mark.parametrize("device", amp_devices())
def test_rerank_features_and_lists(device):
    h, _ = half_features(device, n=40)
    x = h.float()
    want = kreciprocal_rerank(x[:10], x[10:], k1=8, k2=3)
    lists = topk_neighbors(x, 12)
    want_lists = kreciprocal_rerank(lists, k1=8, k2=3, num_query=10)
    with torch.autocast(device, dtype=AMP[device]):
        got = kreciprocal_rerank(x[:10], x[10:], k1=8, k2=3)
        got_half = kreciprocal_rerank(h[:10], h[10:], k1=8, k2=3)
        got_lists = kreciprocal_rerank(lists, k1=8, k2=3, num_query=10)
    assert got.dtype == got_half.dtype == got_lists.dtype == torch.float32
    assert torch.equal(got, want) and torch.equal(got_half, want) and torch.equal(got_lists, want_lists)


def test_rerank_gpu_algorithm_ops_under_autocast():
    x, _ = features(30)
    op = torch.ops.ssml_fast._kreciprocal_rerank_gpu_algorithm
    want = op(x[:8], x[8:], 6, 2, 0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(op(x[:8], x[8:], 6, 2, 0.3), want)


@pytest.mark.parametrize("device", amp_devices())
def test_memory_ops_write_in_place_under_autocast(device):
    h, labels = half_features(device, n=6, d=4)
    bank = F.normalize(torch.randn(10, 4), dim=1).to(device)
    want = bank.clone()
    bank_momentum_update_(want, torch.tensor([1, 3, 3, 7, 0, 9], device=device), h.float(), 0.5)
    buf = torch.zeros(8, 4, device=device)
    with torch.autocast(device, dtype=AMP[device]):
        bank_momentum_update_(bank, torch.tensor([1, 3, 3, 7, 0, 9], device=device), h.float(), 0.5)
        ptr = queue_enqueue_(buf, h.float(), 5)
    assert bank.dtype == torch.float32 and torch.equal(bank, want)
    assert ptr == 3 and torch.equal(buf[5:], h.float()[:3]) and torch.equal(buf[:3], h.float()[3:])


@requires_cuda
def test_cuda_float16_autocast_matches_float32():
    # Explicitly on the GPU too (the parametrised tests above run there when a GPU is present).
    h, labels = half_features("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = triplet_margin_loss(h, labels, 0.3, "hard")
    assert loss.dtype == torch.float32
    assert torch.equal(loss, triplet_margin_loss(h.float(), labels, 0.3, "hard"))
