"""Every loss, forward + backward, D = 128, 4 samples per class: ssml_fast vs PML 2.9 (same distance and
semantics), plus NT-Xent at B = 512 against a plain O(B^2) PyTorch formulation of PML's semantics.

Run: .venv/bin/python -m pytest bench/bench_losses.py --benchmark-enable --benchmark-group-by=param:case
or:  .venv/bin/python bench/bench_losses.py   (one process: ours and the peer alternate round by round;
     prints median times, the ratio peer / ours and peak memory as a markdown table)
SSML_BENCH_LARGE=1 adds B = 4096 (ours; PML where it fits). SSML_BENCH_THREADS sets torch's intra-op
threads (default 1: on this shared, oversubscribed 2-core machine two OpenMP threads were up to 100x slower
than one under load). Absolute times are noisy; quote the ratios measured in the same run.
Peak memory: extra resident memory of one forward + backward, in this process (bench/_rss_peak.py: RSS
high-water mark reset before the call, glibc mmap threshold fixed so freed tensors leave RSS).
PML cases that do not fit are skipped: NT-Xent and LiftedStructure build a positives x negatives matrix
(O(B * R^2) with several positives per anchor; NT-Xent ran out of memory at B = 1024, 6.5 GB at 512),
SmoothAP builds B x B x B tensors.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _rss_peak import peak_extra_mb  # noqa: E402
from loss_workloads import NAMES, PML_HAS, make_workload  # noqa: E402

torch.set_num_threads(int(os.environ.get("SSML_BENCH_THREADS", "1")))
LARGE = os.environ.get("SSML_BENCH_LARGE") == "1"
SIZES = [256, 1024] + ([4096] if LARGE else [])
PML_MAX_B = {"ntxent": 512, "lifted": 256, "smooth_ap": 256, "histogram": 1024, "triplet": 1024}


def pml_fits(name, B):
    return name in PML_HAS and B <= PML_MAX_B.get(name, 4096 if LARGE else 1024)


CASES = [(f"{n}:ssml", B) for n in NAMES for B in SIZES]
CASES += [(f"{n}:pml", B) for n in NAMES for B in SIZES if pml_fits(n, B)]
CASES += [("ntxent:ssml", 512), ("ntxent:plain", 512), ("ntxent:pml", 512)]


@pytest.mark.parametrize("impl,B", CASES, ids=[f"{i}-B{b}" for i, b in CASES])
def test_loss(benchmark, impl, B):
    run = make_workload(impl, B)
    run()
    benchmark.group = f"{impl.split(':')[0]}-B{B}"
    benchmark.extra_info.update(threads=torch.get_num_threads(), B=B, peak_mb=peak_extra_mb(run))
    slow = impl.endswith("pml") or B >= 4096
    benchmark.pedantic(run, rounds=3 if slow else 10, warmup_rounds=1)


def alternate(impls, B, budget_s=20.0, max_rounds=15, memory=False):
    """Median seconds per implementation, running them round-robin in this process; with memory=True
    the first timed round also records each call's peak extra RSS (MB). At least 3 rounds unless the
    slowest implementation takes over 4 x budget_s in total (PML's O(B R^2) cases)."""
    runs = {k: make_workload(k, B) for k in impls}
    for f in runs.values():
        f()  # warm-up
    times = {k: [] for k in impls}
    peaks = {}
    start = time.perf_counter()
    for r in range(max_rounds):
        for k, f in runs.items():
            t = time.perf_counter()
            if memory and r == 0:
                peaks[k] = peak_extra_mb(f)
            else:
                f()
            times[k].append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        if (r >= 2 and elapsed > budget_s) or elapsed > 4 * budget_s:
            break
    med = {k: statistics.median(v) for k, v in times.items()}
    return (med, peaks) if memory else med


def main():
    mem = os.environ.get("SSML_BENCH_MEMORY", "1") == "1"
    print(f"threads={torch.get_num_threads()}  D=128  4 samples/class  (times: median ms; ratio = PML / ours)")
    print("| loss | B | ours ms | PML ms | PML/ours | ours peak MB | PML peak MB |")
    print("|---|---|---|---|---|---|---|")
    for name in NAMES:
        for B in SIZES:
            impls = [f"{name}:ssml"] + ([f"{name}:pml"] if pml_fits(name, B) else [])
            t, peaks = alternate(impls, B, memory=mem)
            ours = t[impls[0]] * 1e3
            peer = t[impls[1]] * 1e3 if len(impls) > 1 else None
            m_ours, m_peer = peaks.get(impls[0]), peaks.get(impls[1]) if peer else None
            fmt = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
            print(f"| {name} | {B} | {ours:.2f} | {fmt(peer, 2)} | {fmt(peer / ours if peer else None)} "
                  f"| {fmt(m_ours)} | {fmt(m_peer)} |", flush=True)
    t, peaks = alternate(["ntxent:ssml", "ntxent:plain", "ntxent:pml"], 512, budget_s=60.0, max_rounds=7,
                         memory=True)
    o, p, q = (t[k] * 1e3 for k in ("ntxent:ssml", "ntxent:plain", "ntxent:pml"))
    print(f"\nNT-Xent B=512: ours {o:.2f} ms, plain O(B^2) {p:.2f} ms, PML {q:.1f} ms -> "
          f"PML/ours {q / o:.0f}x, plain/ours {p / o:.2f}x")
    print("  peak MB: " + ", ".join(f"{k.split(':')[1]} {v}" for k, v in peaks.items()))


if __name__ == "__main__":
    main()
