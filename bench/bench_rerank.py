"""k-reciprocal re-ranking: ssml_fast (features, and top-K lists from faiss) vs the dense numpy code.

Run: .venv/bin/python -m pytest bench/bench_rerank.py --benchmark-enable -s
  test_rerank[...]         pytest-benchmark timings, N in {2,000, 10,000}; extra_info["peak_mb"] is the
                           peak extra resident memory of one call, measured in a fresh process;
  test_alternating_ratio   runs ssml and numpy alternately in one process, prints medians and numpy / ssml.
SSML_BENCH_LARGE=1 adds N = 20,000 (numpy: about 70 s and 9 GB) and N = 100,000 (ssml only: the features
path, and top-K lists from faiss).
d = 128, k1 = 20, k2 = 6, lambda = 0.3, queries = N // 6. Quote ratios: the machine may be shared.
"""
import os

import numpy as np
import pytest
import torch

from _round_robin import round_robin_medians
from _rss_peak import peak_extra_mb_in_child
from rerank_workloads import make_data, make_workload, numpy_rerank
from ssml_fast.ops import kreciprocal_rerank

LARGE = os.environ.get("SSML_BENCH_LARGE") == "1"
SIZES = [2_000, 10_000] + ([20_000, 100_000] if LARGE else [])
IMPLS = ["ssml", "ssml_topk", "numpy"]

def one_run_in_child(impl, n):
    """(peak extra MB, seconds) of one call in a fresh interpreter; None when it fails."""
    return peak_extra_mb_in_child("rerank_workloads", {"impl": impl, "n": n}, {"impl": impl, "n": 300})


def too_big(impl, n):
    return (impl == "numpy" and n > 20_000) or (impl == "ssml_topk" and n < 10_000)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", IMPLS)
def test_rerank(benchmark, impl, n):
    if too_big(impl, n):
        pytest.skip("numpy would need N x N float32 matrices beyond this machine" if impl == "numpy"
                    else "faiss lists only pay off at larger N")
    run = make_workload(impl, n)
    child = one_run_in_child(impl, n)
    benchmark.extra_info.update(threads=torch.get_num_threads(), N=n, queries=n // 6,
                                peak_mb=child and child[0], child_seconds=child and child[1])
    rounds = 1 if (impl == "numpy" and n >= 10_000) or n >= 100_000 else 3
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=0)


@pytest.mark.parametrize("n,rounds", [(2_000, 5), (10_000, 2)])
def test_alternating_ratio(n, rounds):
    x, q = make_data(n)
    ours = kreciprocal_rerank(x[:q], x[q:]).numpy()
    ref = numpy_rerank(x[:q], x[q:])
    assert np.abs(ours - ref).max() < 1e-5
    med = round_robin_medians({"ssml": lambda: kreciprocal_rerank(x[:q], x[q:]),
                               "numpy": lambda: numpy_rerank(x[:q], x[q:])}, rounds, warmup=0)
    print(f"\nre-ranking N={n} (q={q}, d=128, {torch.get_num_threads()} threads): "
          f"ssml {med['ssml']:.3f} s, numpy {med['numpy']:.3f} s, numpy / ssml = {med['numpy'] / med['ssml']:.1f}x")
