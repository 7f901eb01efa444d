"""retrieval_metrics vs PML's AccuracyCalculator, N in {10,000, 50,000}, D = 128, 50 samples per class.

Run: .venv/bin/python -m pytest bench/bench_evaluation.py --benchmark-enable -s
  test_evaluation[...]      pytest-benchmark timings of each implementation;
  test_alternating_ratio    runs ours and PML alternately in one process and prints median times and
                            the ratio PML / ours (the machine is shared: quote ratios, not absolute times).
Both compute P@1, R-precision, MAP@R and NMI with the same faiss IndexFlatL2 search and the same faiss
k-means (niter=20, seed 1234); ours also returns Recall@{1,2,4,8}. PML is configured with
k="max_bin_count": its default k=None searches all N - 1 neighbours (a 50,000 x 49,999 result, ~30 GB).
SSML_BENCH_NMI=0 leaves NMI out of both (neighbour search + metrics only).
"""
import os

import faiss
import numpy as np
import pytest
import torch

from _round_robin import round_robin_medians
from ssml_fast.evaluation import retrieval_metrics

SIZES = [10_000, 50_000]
D = 128
PER_CLASS = 50
WITH_NMI = os.environ.get("SSML_BENCH_NMI", "1") == "1"


def make_data(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n // PER_CLASS), PER_CLASS)
    centers = rng.normal(size=(n // PER_CLASS, D)).astype(np.float32)
    emb = centers[labels] + 2.0 * rng.normal(size=(n, D)).astype(np.float32)
    return emb, labels


def make_run(impl, n):
    emb, labels = make_data(n)
    if impl == "ssml":
        return lambda: retrieval_metrics(emb, labels, (1, 2, 4, 8), "euclidean", nmi=WITH_NMI, use_gpu=False)
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import FaissKNN

    include = ("precision_at_1", "r_precision", "mean_average_precision_at_r") + (("NMI",) if WITH_NMI else ())
    calc = AccuracyCalculator(include=include, k="max_bin_count", device=torch.device("cpu"),
                              knn_func=FaissKNN(index_init_fn=faiss.IndexFlatL2))
    q, ql = torch.from_numpy(emb), torch.from_numpy(labels)
    return lambda: calc.get_accuracy(q, ql)


def threads():
    return {"torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads()}


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", ["ssml", "pml"])
def test_evaluation(benchmark, impl, n):
    run = make_run(impl, n)
    benchmark.extra_info.update(threads(), n=n, d=D, nmi=WITH_NMI)
    benchmark.pedantic(run, rounds=3 if n <= 10_000 else 2, warmup_rounds=1 if n <= 10_000 else 0)


@pytest.mark.parametrize("n", SIZES)
def test_alternating_ratio(n):
    ours, pml = make_run("ssml", n), make_run("pml", n)
    med = round_robin_medians({"ssml": ours, "pml": pml}, 3)  # the warm-up round also checks both run
    print(f"\nN={n} D={D} nmi={WITH_NMI} {threads()}: ssml {med['ssml']:.2f} s, PML {med['pml']:.2f} s, "
          f"PML/ssml = {med['pml'] / med['ssml']:.2f}x")
