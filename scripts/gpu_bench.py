"""GPU-size benchmarks of the fused ops, for scripts/gpu_check.sh (never run in CI).

    python scripts/gpu_bench.py --out DIR [--device cuda] [--quick]

Times, on one device, the library's hot ops at the sizes a GPU is for: triplet loss forward + backward
(B = 4096 / 8192 / 16384, D = 128, 4 samples per class, every mining), STML's contextual similarity
(n = 240 / 1024 / 4096, d = 1024, k = 10), k-reciprocal re-ranking (N = 10k and 100k rows, d = 256, k1 = 20,
k2 = 6) and the memory-bank updates; with the plain-PyTorch floor (a cdist forward + backward) for the triplet
and the CPU op as a reference for the smaller contextual / re-ranking sizes. Medians of a few timed calls after
a warm-up (CUDA-synchronised); peak device memory per case. Writes DIR/bench.md (a Markdown table) and
DIR/bench.json. `--quick` uses small sizes (a smoke test that runs on the CPU too). A case that fails (out of
memory, ...) is recorded with its error and the run goes on.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, rounds: int, budget_s: float):
    """Median seconds per call after one warm-up call; stops early once `budget_s` is spent."""
    fn()
    sync(device)
    times = []
    start = time.perf_counter()
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times), len(times)


def peak_mb(device):
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def triplet_cases(device, quick):
    from ssml_fast.ops import triplet_margin_loss

    sizes = [256, 512] if quick else [4096, 8192, 16384]
    for B in sizes:
        g = torch.Generator().manual_seed(B)
        emb = torch.randn(B, 128, generator=g).to(device).requires_grad_()
        labels = (torch.arange(B) // 4).to(device)
        for mining in ("all", "hard", "semihard"):
            def run(m=mining):
                emb.grad = None
                triplet_margin_loss(emb, labels, 0.2, m, "euclidean").backward()
            yield f"triplet {mining} fwd+bwd", f"B={B}", run, None

        def floor():
            emb.grad = None
            torch.cdist(emb, emb).sum().backward()
        yield "triplet floor: cdist fwd+bwd", f"B={B}", floor, None


def contextual_cases(device, quick):
    from ssml_fast.ops import contextual_similarity

    sizes = [64, 240] if quick else [240, 1024, 4096]
    for n in sizes:
        x = torch.randn(n, 1024, generator=torch.Generator().manual_seed(n))
        xd = x.to(device)
        cpu = (lambda x=x: contextual_similarity(x, 10)) if n <= 1024 and device.type != "cpu" else None
        yield "contextual_similarity k=10", f"n={n}", (lambda xd=xd: contextual_similarity(xd, 10)), cpu


def rerank_cases(device, quick):
    from ssml_fast.ops import kreciprocal_rerank

    sizes = [(2_000, 200)] if quick else [(10_000, 1_000), (100_000, 1_000)]
    for n, q in sizes:
        x = torch.randn(n, 256, generator=torch.Generator().manual_seed(n))
        xd = x.to(device)
        cpu = (lambda x=x, q=q: kreciprocal_rerank(x[:q], x[q:], 20, 6, 0.3)) if n <= 10_000 and device.type != "cpu" else None
        yield "kreciprocal_rerank k1=20 k2=6", f"N={n} q={q}", (lambda xd=xd, q=q: kreciprocal_rerank(xd[:q], xd[q:], 20, 6, 0.3)), cpu


def memory_cases(device, quick):
    from ssml_fast.ops import bank_momentum_update_, queue_enqueue_

    slots = 10_000 if quick else 1_000_000
    bank = torch.nn.functional.normalize(torch.randn(slots, 128, device=device), dim=1)
    ids = torch.randperm(slots, device=device)[:1024]
    feats = torch.randn(1024, 128, device=device)
    yield "bank_momentum_update_", f"slots={slots} B=1024", (lambda: bank_momentum_update_(bank, ids, feats, 0.5)), None
    queue = torch.zeros(65_536, 128, device=device)
    rows = torch.randn(1024, 128, device=device)
    yield "queue_enqueue_", "size=65536 B=1024", (lambda: queue_enqueue_(queue, rows, 65_000)), None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of timed calls per case at most")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device", file=sys.stderr)
        return 2
    import ssml_fast

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    groups = (triplet_cases, contextual_cases, rerank_cases, memory_cases)
    for group in groups:
        try:
            cases = list(group(device, args.quick))
        except Exception as e:  # noqa: BLE001  (setup of a whole group, e.g. out of memory)
            rows.append(dict(op=group.__name__, size="", ms=None, calls=0, peak_mb=None, cpu_ms=None,
                             error=f"{type(e).__name__}: {e}"[:200]))
            continue
        for op, size, fn, cpu_fn in cases:
            row = dict(op=op, size=size, ms=None, calls=0, peak_mb=None, cpu_ms=None, error="")
            try:
                reset_peak(device)
                sec, calls = timed(fn, device, args.rounds, args.budget)
                row.update(ms=sec * 1e3, calls=calls, peak_mb=peak_mb(device))
                if cpu_fn is not None:
                    row["cpu_ms"] = timed(cpu_fn, torch.device("cpu"), 3, args.budget)[0] * 1e3
            except Exception as e:  # noqa: BLE001  (record and go on: OOM at the largest size, ...)
                row["error"] = f"{type(e).__name__}: {e}"[:200]
            rows.append(row)
            print(f"{op:34s} {size:22s} " + (f"{row['ms']:10.2f} ms" if row["ms"] is not None else row["error"]),
                  flush=True)

    info = ssml_fast.build_info()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (f"device: {name}; torch {torch.__version__}; ssml_fast {info['version']} "
              f"(CUDA archs: {info.get('cuda_archs') or 'none'})\n\n")
    lines = ["| op | size | ms / call (median) | calls | peak MB | CPU op ms | CPU / device | error |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    fmt = lambda v, f="{:.2f}": "" if v is None else f.format(v)  # noqa: E731
    for r in rows:
        ratio = r["cpu_ms"] / r["ms"] if r["cpu_ms"] and r["ms"] else None
        lines.append(f"| {r['op']} | {r['size']} | {fmt(r['ms'])} | {r['calls']} | {fmt(r['peak_mb'], '{:.0f}')} | "
                     f"{fmt(r['cpu_ms'])} | {fmt(ratio, '{:.1f}x')} | {r['error']} |")
    (args.out / "bench.md").write_text(header + "\n".join(lines) + "\n")
    (args.out / "bench.json").write_text(json.dumps(dict(device=name, rows=rows), indent=1))
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
