"""The proxy / classification losses of issue 12, forward + backward (embedding and weight gradients):
ssml_fast vs PML 2.9 in one process, round-robin call by call (bench/_round_robin.py's rule).

Run: .venv/bin/python bench/bench_losses_proxy.py  [--rounds N] [--out bench/results_losses_proxy.md]
B = 1024, D = 128, C = 1000 classes, 4 samples per class in the batch (256 classes present), each loss
with PML's defaults (SubCenterArcFace 3 sub-centres, SoftTriple 10 centres per class); the same weights
in both. CenterLoss is not in PML: its peer is the plain formulation (nn.Linear-style logits +
cross-entropy + a centre term) so its overhead is visible. SSML_BENCH_THREADS sets torch's intra-op
threads (default 1, as bench_losses.py: this shared 2-core machine is oversubscribed).
Peak memory: extra resident memory of one forward + backward (bench/_rss_peak.py).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _rss_peak import peak_extra_mb  # noqa: E402

torch.set_num_threads(int(os.environ.get("SSML_BENCH_THREADS", "1")))
B, D, C, PER_CLASS = 1024, 128, 1000, 4
NAMES = ["ArcFaceLoss", "SubCenterArcFaceLoss", "CosFaceLoss", "LargeMarginSoftmaxLoss", "SphereFaceLoss",
         "NormalizedSoftmaxLoss", "SoftTripleLoss", "CenterLoss"]


class _PlainCenterLoss(torch.nn.Module):
    """CenterLoss as it is usually written: logits x W + b, cross-entropy, centre term, same math."""

    def __init__(self, ours):
        super().__init__()
        self.W = torch.nn.Parameter(ours.W.detach().clone())
        self.b = torch.nn.Parameter(ours.b.detach().clone())
        self.register_buffer("centers", ours.centers.clone())
        self.lambda_c = ours.lambda_c

    def forward(self, x, y):
        ce = F.cross_entropy(x @ self.W + self.b, y)
        return ce + 0.5 * self.lambda_c * (x - self.centers[y]).pow(2).sum(1).mean()


def make(name, impl, seed=0):
    """A zero-argument callable running forward + backward of one implementation."""
    from ssml_fast import losses as L

    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, generator=g).requires_grad_(True)
    labels = torch.randperm(C, generator=g)[: B // PER_CLASS].repeat_interleave(PER_CLASS)
    ours = getattr(L, name)(C, D) if name != "SubCenterArcFaceLoss" else L.SubCenterArcFaceLoss(num_classes=C, embedding_size=D)
    if impl == "ssml":
        fn = ours
    elif name == "CenterLoss":
        fn = _PlainCenterLoss(ours)
    else:
        from pytorch_metric_learning import losses as P

        fn = getattr(P, name)(num_classes=C, embedding_size=D)
        getattr(fn, ours.weight_attr).data.copy_(ours.weight.data)
    params = [p for p in fn.parameters()]

    def run():
        emb.grad = None
        for p in params:
            p.grad = None
        fn(emb, labels).backward()
    return run


def alternate(name, rounds, memory=True):
    runs = {impl: make(name, impl) for impl in ("ssml", "peer")}
    for f in runs.values():
        f()
    peaks = {k: peak_extra_mb(f) for k, f in runs.items()} if memory else {}
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, peaks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--only", action="append", help="loss class name (repeatable)")
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    args = ap.parse_args(argv)
    names = args.only or NAMES
    lines = [f"B={B}  D={D}  C={C}  {PER_CLASS} per class  threads={torch.get_num_threads()}  "
             f"rounds={args.rounds}  torch {torch.__version__}  {platform.machine()} "
             f"({os.cpu_count()} cpus)  (times: median ms of forward + backward; ratio = peer / ours)",
             "",
             "| loss | ours ms | peer ms | peer / ours | ours peak MB | peer peak MB | peer |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in names:
        t, peaks = alternate(name, args.rounds)
        o, p = t["ssml"] * 1e3, t["peer"] * 1e3
        peer = "plain PyTorch" if name == "CenterLoss" else "PML 2.9"
        row = (f"| {name} | {o:.1f} | {p:.1f} | {p / o:.2f} | {peaks['ssml']:.1f} | {peaks['peer']:.1f} | "
               f"{peer} |")
        print(row, flush=True)
        lines.append(row)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Proxy / classification losses vs PML\n\n")
            f.write(f"Command: `.venv/bin/python bench/bench_losses_proxy.py --rounds {args.rounds}`\n\n")
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
