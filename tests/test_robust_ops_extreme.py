"""Extreme but valid inputs (issue 16): scale invariance of re-ranking, contextual similarity and the
evaluation search, and collapsed (all-identical) features."""
import numpy as np
import pytest
import torch

from ssml_fast.evaluation import knn_search, retrieval_metrics
from ssml_fast.ops import contextual_similarity, kreciprocal_rerank

gpu_algorithm = torch.ops.ssml_fast._kreciprocal_rerank_gpu_algorithm


def feats(n=60, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exponent", [66, 100, -70])
def test_rerank_power_of_two_scale_is_bit_identical(dtype, exponent):
    if dtype == torch.float32 and exponent == 100:
        exponent = 120  # still finite in float32
    x = feats(dtype=dtype)
    want = kreciprocal_rerank(x[:15], x[15:])
    xs = x * 2.0 ** exponent
    assert torch.isfinite(xs).all()
    assert torch.equal(kreciprocal_rerank(xs[:15], xs[15:]), want)
    assert torch.equal(gpu_algorithm(xs[:15], xs[15:], 20, 6, 0.3), gpu_algorithm(x[:15], x[15:], 20, 6, 0.3))


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-25])
def test_rerank_at_large_scale_equals_unit_scale(scale):
    x = feats(dtype=torch.float64)
    want = kreciprocal_rerank(x[:15].float(), x[15:].float())
    xs = (x * scale).float()
    got = kreciprocal_rerank(xs[:15], xs[15:])
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["cpu", "gpu_algorithm"])
def test_collapsed_features_rerank_to_exact_zeros(dtype, op):
    x = torch.full((30, 16), 0.37, dtype=dtype)
    out = kreciprocal_rerank(x[:7], x[7:]) if op == "cpu" else gpu_algorithm(x[:7], x[7:], 20, 6, 0.3)
    assert torch.equal(out, torch.zeros(7, 23))


def test_partly_collapsed_features_put_copies_at_zero():
    x = feats(40)
    x[5:25] = x[5]  # 20 copies of one row among distinct ones
    out = kreciprocal_rerank(x[:10], x[10:])
    assert (out[5:10, :15] == 0).all()  # queries 5..9 vs gallery rows 10..24: copies
    assert (out[:5] > 0).all()
    assert torch.equal(out, gpu_algorithm(x[:10], x[10:], 20, 6, 0.3))


@pytest.mark.parametrize("scale", [2.0 ** 70, 1e20, 1e-30])
def test_contextual_similarity_is_scale_invariant(scale):
    x = feats(32, 6, dtype=torch.float64)
    ids = torch.arange(32) // 2
    want = contextual_similarity(x.float(), 5, ids=ids, return_parts=True)
    got = contextual_similarity((x * scale).float(), 5, ids=ids, return_parts=True)
    for a, b in zip(got, want):
        if scale == 2.0 ** 70:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale,dtype", [(1e30, np.float32), (1e200, np.float64), (1e-30, np.float32),
                                         (1e-200, np.float64)])
def test_retrieval_metrics_are_scale_invariant(scale, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 8))
    labels = rng.integers(0, 5, 80)
    want = retrieval_metrics(x.astype(np.float32), labels, nmi=False)
    got = retrieval_metrics((x * scale).astype(dtype), labels, nmi=False)
    assert got == pytest.approx(want, abs=1e-9)
    q, g = (x[:20] * scale).astype(dtype), (x[20:] * scale).astype(dtype)
    got = retrieval_metrics(q, labels[:20], gallery=g, gallery_labels=labels[20:], nmi=False)
    want = retrieval_metrics(x[:20].astype(np.float32), labels[:20], gallery=x[20:].astype(np.float32),
                             gallery_labels=labels[20:], nmi=False)
    assert got == pytest.approx(want, abs=1e-9)


def test_knn_search_scores_come_back_in_the_input_scale():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 6))
    s1, i1 = knn_search(x.astype(np.float32), 5)
    s2, i2 = knn_search((x * 2.0 ** 80).astype(np.float32), 5)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(s2 / 2.0 ** 80, s1, rtol=1e-6, atol=0)
    s3, i3 = knn_search((x * 2.0 ** 50), 5, metric="inner_product")
    s4, i4 = knn_search(x, 5, metric="inner_product")
    assert torch.equal(i3, i4)
    torch.testing.assert_close(s3.double() / 2.0 ** 100, s4.double(), rtol=1e-6, atol=0)


def test_float64_beyond_float32_range_is_accepted():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 4)) * 1e300
    labels = rng.integers(0, 3, 40)
    got = retrieval_metrics(x, labels, nmi=False)
    assert got == pytest.approx(retrieval_metrics((x / 1e300).astype(np.float32), labels, nmi=False), abs=1e-9)
