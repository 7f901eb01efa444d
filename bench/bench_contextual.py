"""STML contextual similarity, n = 240 (120 images x 2 views), k = 10, 1024-d teacher embeddings.

Run: .venv/bin/python -m pytest bench/bench_contextual.py --benchmark-enable -s
  test_contextual[...]     pytest-benchmark timings of ssml_fast, the unfused dense-tensor PyTorch
                           version of the same math, and the official code's per-row Python loop;
  test_alternating_ratio   runs the three alternately in one process on one thread (the issue's setting;
                           SSML_BENCH_THREADS overrides), prints medians and the ratios.
The 240 x 1024 x 240 similarity GEMM is the floor all three share; it is timed alongside.
"""
import os

import pytest
import torch

from _round_robin import round_robin_medians
from contextual_workloads import dense_torch, make_inputs, make_workload, row_loop
from ssml_fast.ops import contextual_similarity

IMPLS = ["ssml", "dense", "row_loop"]
THREADS = int(os.environ.get("SSML_BENCH_THREADS", "1"))


@pytest.fixture
def threads():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(old)


@pytest.mark.parametrize("impl", IMPLS)
def test_contextual(benchmark, threads, impl):
    run = make_workload(impl)
    benchmark.extra_info.update(threads=threads, n=240, k=10, d=1024)
    benchmark.pedantic(run, rounds=30 if impl != "row_loop" else 10, warmup_rounds=2)


def test_alternating_ratio(threads):
    emb, ids = make_inputs()
    ours = contextual_similarity(emb, 10, ids=ids)
    for other in (dense_torch, row_loop):
        torch.testing.assert_close(other(emb, 10, ids=ids), ours, atol=1e-5, rtol=0)
    fns = {name: make_workload(name) for name in IMPLS}
    fns["gemm_floor"] = lambda: emb @ emb.T
    med = {k: v * 1e3 for k, v in round_robin_medians(fns, 40, warmup=3).items()}
    print(f"\ncontextual similarity n=240 k=10 d=1024, {threads} thread(s): "
          + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items())
          + f"; dense / ssml = {med['dense'] / med['ssml']:.2f}x,"
          + f" row_loop / ssml = {med['row_loop'] / med['ssml']:.1f}x")
