"""The CUDA backend's contextual_similarity (common/contextual_gpu_host.h + the per-element bodies of
common/contextual_kernels.h), run on the CPU through the private op _contextual_similarity_gpu_algorithm, against
the CPU kernel and the plain reference of tests/reference/contextual.py.

The two kernels rank differently (an O(n) count per entry vs a per-row selection), find duplicate rows differently
(unique_dim vs hashing), decide dense vs sparse expansion from different work estimates and sum the expansion in
different orders; every one of them keeps the numbers, so on the same inputs they agree to float32 rounding."""
import pytest
import torch

from reference.contextual import dyadic, reference

gpu_algorithm = torch.ops.ssml_fast._contextual_similarity_gpu_algorithm
cpu_op = torch.ops.ssml_fast.contextual_similarity


def assert_same(emb, k, sigma=3.0, ids=None, atol=1e-6):
    got, want = gpu_algorithm(emb, k, sigma, ids), cpu_op(emb, k, sigma, ids)
    for name, g, w in zip(("w", "w_p", "w_c"), got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g, w, atol=atol, rtol=0, msg=lambda s: f"{name}: {s}")
    return got


@pytest.mark.parametrize("n,k", [(1, 1), (2, 1), (7, 3), (13, 13), (40, 10), (65, 7), (130, 20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_matches_cpu_kernel(n, k, dtype):
    emb = torch.randn(n, 9, dtype=dtype, generator=torch.Generator().manual_seed(n * 10 + k))
    got = assert_same(emb, k)
    if dtype == torch.float64 and n <= 40:
        for g, r in zip(got, reference(emb, k)):
            torch.testing.assert_close(g.double(), r, atol=1e-6, rtol=0)


@pytest.mark.parametrize("levels", [None, 5])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_exact_ties_and_duplicates(levels, k):
    """Dyadic rows: distances exact in float32, so ties (and duplicate rows) are decided by the index rule."""
    emb = dyadic(48, seed=3, levels=levels)
    got = assert_same(emb, k, atol=0)
    for g, r in zip(got, reference(emb, k)):
        torch.testing.assert_close(g.double(), r, atol=1e-6, rtol=0)


def test_ids_ranked_first():
    emb = torch.randn(36, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ids = torch.arange(36) % 12  # three views per sample
    for k in (2, 3, 8):
        got = assert_same(emb, k, ids=ids)
        for g, r in zip(got, reference(emb, k, ids=ids)):
            torch.testing.assert_close(g.double(), r, atol=1e-6, rtol=0)


def test_dense_expansion_path():
    """n * m * k above an eighth of n^3: the host takes the GEMM expansion (dense_expansion)."""
    emb = torch.randn(60, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for k in (40, 60):
        assert_same(emb, k)


def test_zero_row_scale_and_nan():
    emb = dyadic(20, seed=6)
    emb[3] = 0
    assert_same(emb, 5)
    big = torch.randn(30, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7)) * 1e200
    assert_same(big, 6)
    assert_same(big * 1e-300 * 1e-100, 6)  # tiny rows: rescaled before the Gram form underflows
    bad = emb.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        gpu_algorithm(bad, 3, 3.0, None)
    with pytest.raises(ValueError, match="k must be in"):
        gpu_algorithm(emb, 0, 3.0, None)
