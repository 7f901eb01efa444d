"""Issue 12 pair / tuple losses, forward + backward, ssml_fast vs PML side by side in one process.

Run: .venv/bin/python bench/bench_losses_pairs.py            (prints a markdown table)
     SSML_BENCH_B=256 ... for another batch size; SSML_BENCH_THREADS (default 1) sets torch's threads;
     SSML_BENCH_LOSSES=circle,angular for a subset.
Workload: embeddings (B, 128) float32 randn (as bench/loss_workloads.py), B = 1024, 4 samples per class,
PML 2.9's class with the same (default) arguments; each call computes the loss and its gradient w.r.t. a
fresh leaf copy of the embeddings. Ours and PML's alternate call by call (bench/_round_robin.py), so a load
change on this shared machine hits both alike: quote the ratio PML / ours of the same run. Peak memory is
the extra resident memory of one warmed-up call (bench/_rss_peak.py), measured in this process.
"""
from __future__ import annotations

import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _rss_peak import peak_extra_mb  # noqa: E402
from _round_robin import round_robin_medians  # noqa: E402

torch.set_num_threads(int(os.environ.get("SSML_BENCH_THREADS", "1")))
D, M = 128, 4


def _data(B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.arange(B // M).repeat_interleave(M)[:B]


def _losses(name):
    from pytorch_metric_learning import losses as P

    from ssml_fast import losses as L
    return {
        "circle": (L.CircleLoss, P.CircleLoss),
        "angular": (L.AngularLoss, P.AngularLoss),
        "margin": (L.MarginLoss, P.MarginLoss),
        "margin_learn_beta": (lambda: L.MarginLoss(learn_beta=True, nu=0.1, num_classes=256),
                              lambda: P.MarginLoss(learn_beta=True, nu=0.1, num_classes=256)),
        "supcon": (L.SupConLoss, P.SupConLoss),
        "log_ratio": (L.LogRatioLoss, None),
    }[name]


NAMES = ["circle", "angular", "supcon", "margin", "margin_learn_beta", "log_ratio"]


def make_workload(name: str, impl: str, B: int):
    x, y = _data(B)
    ours, pml = _losses(name)
    loss = (ours if impl == "ssml" else pml)()
    labels = torch.rand(B) * 10 if name == "log_ratio" else y  # continuous labels for the log-ratio loss

    def run():
        e = x.clone().requires_grad_(True)
        loss(e, labels).backward()
        return e.grad
    return run


def main():
    B = int(os.environ.get("SSML_BENCH_B", "1024"))
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"torch {torch.__version__}, threads={torch.get_num_threads()}; B={B} D={D} {M}/class")
    print("| loss | ours ms | PML ms | PML / ours | ours peak MB | PML peak MB |")
    print("|---|---|---|---|---|---|")
    names = os.environ.get("SSML_BENCH_LOSSES", ",".join(NAMES)).split(",")
    for name in names:
        impls = ["ssml"] + (["pml"] if _losses(name)[1] is not None else [])
        fns = {k: make_workload(name, k, B) for k in impls}
        for f in fns.values():
            f()  # warm-up
        peaks = {k: peak_extra_mb(f) for k, f in fns.items()}
        t0 = time.perf_counter()
        fns["pml" if "pml" in fns else "ssml"]()
        slow = time.perf_counter() - t0
        rounds = 3 if slow > 2 else (7 if slow > 0.3 else 15)
        med = round_robin_medians(fns, rounds=rounds, warmup=0)
        ours = med["ssml"] * 1e3
        peer = med.get("pml")
        cells = [f"{ours:.1f}", "-" if peer is None else f"{peer * 1e3:.1f}",
                 "-" if peer is None else f"{peer * 1e3 / ours:.1f}x", f"{peaks['ssml']}",
                 "-" if peer is None else f"{peaks['pml']}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    floor_line(B)


def floor_line(B):
    """The part no implementation of these losses avoids: the B x B similarity GEMM and the backward GEMM
    (W + W^T) X, plus one exp pass over B x B, timed round-robin like the losses."""
    x, _ = _data(B)
    w = torch.randn(B, B)

    def gemms():
        s = x @ x.T
        return s, w.T.contiguous().add_(w) @ x

    med = round_robin_medians({"gemms": gemms, "exp": lambda: w.exp()}, rounds=9, warmup=1)
    print(f"\nfloor at B={B}: similarity GEMM + backward GEMM {med['gemms'] * 1e3:.1f} ms, "
          f"one exp over B x B {med['exp'] * 1e3:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
