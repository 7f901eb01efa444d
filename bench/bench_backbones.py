"""Embedding throughput (images / s) of the trunks on this CPU: eval mode, no gradient, the step
`ssml-fast index` runs per batch (trunk forward + pooling; heads are negligible next to it).

Configurations alternate call by call in one process (as bench/_round_robin.py), so a change of load on
the shared machine hits them alike; absolute images / s are the medians of that run, under whatever load
the machine had (quoted with the load average). The process CPU seconds per image are also recorded:
on a busy machine the wall time is inflated by waiting for a core, the CPU time much less, so
threads / (CPU s per image) estimates the images / s of an idle machine with perfect thread scaling.

    .venv/bin/python bench/bench_backbones.py [--rounds 5] [--threads 2] [--out bench/results_backbones.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

import statistics  # noqa: E402

from ssml_fast.models import build_trunk, skip_pretrained_loading  # noqa: E402

# (label, backbone, image (C, H, W), batch, trunk kwargs)
CONFIGS = [
    ("small_cnn 28x28 grey (flatten)", "small_cnn", (1, 28, 28), 512, {}),
    ("small_cnn 224x224 RGB (gap)", "small_cnn", (3, 224, 224), 32, {"pool": "gap"}),
    ("resnet18 224x224 RGB (gap), channels_last", "resnet18", (3, 224, 224), 16, {"channels_last": True}),
    ("resnet18 224x224 RGB (gap), NCHW", "resnet18", (3, 224, 224), 16, {"channels_last": False}),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the markdown table here")
    p.add_argument("--only", default=None, help="comma-separated substrings of the labels to run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    configs = [c for c in CONFIGS if args.only is None or any(s in c[0] for s in args.only.split(","))]
    fns, batches = {}, {}
    for label, name, shape, batch, kw in configs:
        with skip_pretrained_loading():  # ImageNet architecture / normalisation, random weights: same speed
            trunk = build_trunk(name, shape, 0.5, 0.25, **kw).eval()
        x = torch.rand(batch, *shape)

        def fn(trunk=trunk, x=x):
            with torch.inference_mode():
                return trunk(x)

        fns[label], batches[label] = fn, batch
    load0 = os.getloadavg()[0]
    t0 = time.time()
    for fn in fns.values():  # warm-up round (oneDNN primitives, allocator)
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(args.rounds):
        for label, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[label].append(time.perf_counter() - w)
            cpu[label].append(time.process_time() - c)
    load1 = os.getloadavg()[0]
    rows = ["| trunk, input | batch | ms / batch (wall) | images / s (wall) | CPU ms / image | "
            f"idle estimate, images / s at {args.threads} threads |", "|---|---|---|---|---|---|"]
    for label in fns:
        b, mw, mc = batches[label], statistics.median(wall[label]), statistics.median(cpu[label])
        rows.append(f"| {label} | {b} | {mw * 1e3:.0f} | {b / mw:.1f} | {mc / b * 1e3:.1f} | "
                    f"{args.threads * b / mc:.0f} |")
    head = (f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs; load average {load0:.1f} -> {load1:.1f} during the run "
            f"({time.time() - t0:.0f} s, {args.rounds} round-robin rounds after 1 warm-up)")
    text = head + "\n\n" + "\n".join(rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
