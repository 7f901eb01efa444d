"""Triplet loss, forward + backward, D = 128, 4 samples per class: ssml_fast vs PML vs plain PyTorch.

Run: .venv/bin/python -m pytest bench/bench_triplet.py --benchmark-enable --benchmark-group-by=param:B
Set SSML_BENCH_LARGE=1 for B = 4096 against PML (about 3 GB) and B = 8192 for ssml_fast.
Each case also records the peak extra memory of one call, measured in a fresh process (bench/_rss_peak.py),
in extra_info["peak_mb"].
"""
import os

import pytest
import torch

from _round_robin import round_robin_medians
from _rss_peak import peak_extra_mb_in_child
from triplet_workloads import make_workload

LARGE = os.environ.get("SSML_BENCH_LARGE") == "1"
SIZES = [256, 1024] + ([4096, 8192] if LARGE else [])
IMPLS = ["ssml_all", "ssml_hard", "ssml_semihard", "plain_pxk_all", "cdist_floor", "pml_all", "pml_hard"]


def too_big(impl, B):
    if B == 8192:
        return impl not in ("ssml_all", "ssml_hard", "ssml_semihard", "cdist_floor")
    return B >= 4096 and impl == "plain_pxk_all"


@pytest.mark.parametrize("B", SIZES)
@pytest.mark.parametrize("impl", IMPLS)
def test_triplet(benchmark, impl, B):
    if too_big(impl, B):
        pytest.skip("too large for this machine")
    run = make_workload(impl, B)
    child = peak_extra_mb_in_child("triplet_workloads", {"impl": impl, "B": B}, {"impl": impl, "B": 64})
    benchmark.extra_info.update(threads=torch.get_num_threads(), B=B, peak_mb=child and child[0])
    slow = impl.startswith("pml") or B >= 4096
    benchmark.pedantic(run, rounds=3 if slow else 15, warmup_rounds=1)


@pytest.mark.parametrize("B,rounds", [(1024, 40)])
def test_alternating_ratios(B, rounds):
    """The issue's targets as ratios, with every implementation run round-robin in one process (SPEC 9:
    on this 2-core machine consecutive runs of one case drift with other load). Prints medians."""
    runs = {k: make_workload(k, B) for k in ["ssml_all", "ssml_hard", "plain_pxk_all", "cdist_floor", "pml_hard"]}
    med = round_robin_medians(runs, rounds)
    # PML batch-all takes about a second a call: a few rounds of its own.
    med.update(round_robin_medians({"pml_all": make_workload("pml_all", B)}, 3))
    med = {k: v * 1e3 for k, v in med.items()}
    print(f"\nB={B}, D=128, 4 per class, {torch.get_num_threads()} threads, medians (ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    print(f"batch-all: {med['pml_all'] / med['ssml_all']:.0f}x faster than PML, "
          f"{med['plain_pxk_all'] / med['ssml_all']:.1f}x faster than plain P x K, "
          f"{med['ssml_all'] / med['cdist_floor']:.2f}x the cdist floor")
    print(f"batch-hard: {med['ssml_hard'] / med['cdist_floor']:.2f}x the cdist floor, "
          f"{med['pml_hard'] / med['ssml_hard']:.1f}x faster than PML BatchHardMiner + loss")
