"""The CUDA backend's re-ranking algorithm (common/rerank_host.h + the per-row bodies of common/rerank_math.h),
run on the CPU through the private ops _kreciprocal_rerank_gpu_algorithm[_topk], against the CPU kernel.

The two paths share the per-row math but differ in how they get there (stable sort vs fused selection, scanned vs
stamped membership, pairwise merges vs an inverted index); every difference is order-preserving, so on the same
inputs they must agree exactly. The dense numpy reference of tests/test_rerank.py anchors the CPU kernel.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ssml_fast
from ssml_fast.ops import kreciprocal_rerank

from conftest import requires_cuda
from test_rerank import feature_reference, features, sorted_lists, sqdist

gpu_algorithm = torch.ops.ssml_fast._kreciprocal_rerank_gpu_algorithm
gpu_algorithm_topk = torch.ops.ssml_fast._kreciprocal_rerank_gpu_algorithm_topk
cpu_op = torch.ops.ssml_fast.kreciprocal_rerank
cpu_op_topk = torch.ops.ssml_fast.kreciprocal_rerank_topk


def both(x, q, k1, k2, lam=0.3, dtype=torch.float64):
    t = torch.as_tensor(x, dtype=dtype)
    return gpu_algorithm(t[:q], t[q:], k1, k2, lam), cpu_op(t[:q], t[q:], k1, k2, lam)


@pytest.mark.parametrize("n,q", [(50, 10), (300, 60), (1000, 150)])
@pytest.mark.parametrize("k1,k2", [(1, 1), (5, 1), (5, 3), (20, 6), (20, 20)])
def test_features_match_cpu_kernel(n, q, k1, k2):
    x = features(n, 12, seed=n + k1 + k2)
    dtype = torch.float32 if n == 1000 else torch.float64
    got, want = both(x, q, k1, k2, dtype=dtype)
    assert got.dtype == torch.float32 and got.shape == (q, n - q)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("n,q,k1,k2", [(120, 20, 60, 6), (60, 10, 100, 9), (31, 6, 36, 6), (2, 1, 1, 1)])
def test_long_lists_and_k_beyond_n(n, q, k1, k2):
    """Lists longer than the scan threshold (binary-search membership) and k1 + 1 > n (truncated lists)."""
    x = features(n, 8, seed=n + k1)
    got, want = both(x, q, k1, k2)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    np.testing.assert_allclose(got.double().numpy(), feature_reference(x, q, k1, k2, 0.3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_ties(seed, dtype):
    """Integer features in few dimensions: duplicates and equal distances everywhere; the index rule decides."""
    x = features(80, 3, seed=seed, integer=True)
    for k1, k2 in ((20, 6), (5, 2), (10, 1), (1, 1)):
        got, want = both(x, 15, k1, k2, dtype=dtype)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        np.testing.assert_allclose(got.double().numpy(), feature_reference(x, 15, k1, k2, 0.3), atol=1e-5, rtol=0)


def test_all_identical_and_lambda_ends():
    x = np.ones((9, 4))
    for lam in (0.0, 0.3, 1.0):
        got, want = both(x, 3, 4, 2, lam)
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("n,q,k1,k2,K", [(50, 10, 20, 6, 25), (300, 40, 20, 6, 30), (300, 40, 5, 1, 6),
                                         (1000, 100, 20, 6, 40), (70, 20, 60, 6, 70)])
def test_topk_lists_match_cpu_kernel(n, q, k1, k2, K):
    x = features(n, 16, seed=K + n)
    dist, idx = (torch.from_numpy(a) for a in sorted_lists(sqdist(x), K))
    for d in (dist, dist.float()):
        got = gpu_algorithm_topk(d, idx, q, k1, k2, 0.3)
        torch.testing.assert_close(got, cpu_op_topk(d, idx, q, k1, k2, 0.3), atol=0, rtol=0)


def test_topk_ties():
    x = features(90, 3, seed=7, integer=True)
    dist, idx = (torch.from_numpy(a) for a in sorted_lists(sqdist(x), 30))
    for k1, k2 in ((20, 6), (4, 4), (1, 1)):
        got = gpu_algorithm_topk(dist, idx, 20, k1, k2, 0.3)
        torch.testing.assert_close(got, cpu_op_topk(dist, idx, 20, k1, k2, 0.3), atol=0, rtol=0)


def test_bad_indices_and_empty_sides():
    x = torch.randn(30, 5, dtype=torch.float64)
    dist, idx = (torch.from_numpy(a) for a in sorted_lists(sqdist(x.numpy()), 21))
    bad = idx.clone()
    bad[4, 3] = 30
    with pytest.raises(ValueError, match="outside"):
        gpu_algorithm_topk(dist, bad, 5, 20, 6, 0.3)
    bad[4, 3] = bad[4, 2]
    with pytest.raises(ValueError, match="twice"):
        gpu_algorithm_topk(dist, bad, 5, 20, 6, 0.3)
    with pytest.raises(ValueError, match="k2 must be in"):
        gpu_algorithm(x[:5], x[5:], 5, 6, 0.3)
    assert gpu_algorithm(x[:0], x, 5, 2, 0.3).shape == (0, 30)
    assert gpu_algorithm(x, x[:0], 5, 2, 0.3).shape == (30, 0)


def test_opcheck():
    x = torch.randn(40, 6)
    torch.library.opcheck(gpu_algorithm.default, (x[:8], x[8:], 10, 3, 0.3))
    dist, idx = (torch.from_numpy(a) for a in sorted_lists(sqdist(x.double().numpy()), 12))
    torch.library.opcheck(gpu_algorithm_topk.default, (dist, idx, 8, 10, 3, 0.3))


def test_cuda_kernels_registered():
    if not ssml_fast.build_info()["cuda"]:
        pytest.skip("built without CUDA")
    for op in ("kreciprocal_rerank", "kreciprocal_rerank_topk"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ssml_fast::{op}", "CUDA")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    x = torch.randn(1000, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)
    for k1, k2 in ((20, 6), (5, 1), (60, 6)):
        cpu = kreciprocal_rerank(x[:150], x[150:], k1=k1, k2=k2)
        gpu = kreciprocal_rerank(x[:150].cuda(), x[150:].cuda(), k1=k1, k2=k2)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
    xi = torch.from_numpy(features(200, 3, seed=0, integer=True)).to(dtype)  # exact ties: same order on both
    torch.testing.assert_close(kreciprocal_rerank(xi[:40].cuda(), xi[40:].cuda()).cpu(),
                               kreciprocal_rerank(xi[:40], xi[40:]), atol=1e-5, rtol=0)
    dist, idx = (torch.from_numpy(a) for a in sorted_lists(sqdist(x.double().numpy()), 40))
    cpu = kreciprocal_rerank((dist, idx), num_query=150)
    gpu = kreciprocal_rerank((dist.cuda(), idx.cuda()), num_query=150)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 60), data=st.data(), dims=st.integers(1, 4), seed=st.integers(0, 2**16),
       double=st.booleans())
def test_property_matches_cpu_kernel(n, data, dims, seed, double):
    """Any split, any k1 (also beyond n), any k2 <= k1, integer data (ties): both entry points agree exactly."""
    q = data.draw(st.integers(1, n - 1))
    k1 = data.draw(st.integers(1, n + 2))
    k2 = data.draw(st.integers(1, k1))
    lam = data.draw(st.sampled_from([0.0, 0.3, 1.0]))
    x = features(n, dims, seed=seed, integer=True)
    got, want = both(x, q, k1, k2, lam, dtype=torch.float64 if double else torch.float32)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    K = data.draw(st.integers(min(k1 + 1, n), n))
    dist, idx = (torch.from_numpy(a) for a in sorted_lists(sqdist(x), K))
    torch.testing.assert_close(gpu_algorithm_topk(dist, idx, q, k1, k2, lam), cpu_op_topk(dist, idx, q, k1, k2, lam),
                               atol=0, rtol=0)
