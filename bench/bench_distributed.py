"""1 vs 2 processes (torchrun, gloo, CPU): training throughput, all-gather overhead per step, and the
MNIST-5k one-epoch comparison of the issue (supervised and stml, 2 processes vs 1 with the same global batch).

    python bench/bench_distributed.py [--out bench/results_distributed.md] [--epochs 1]

What runs:
- 1 process with 2 torch threads, and 1 process with 1 thread (the per-rank budget), in this process;
- 2 processes x 1 thread under `torchrun --nproc_per_node 2` (this file with --worker);
each trains `supervised` and `stml` (small presets, MNIST-5k, train classes 0-4, seed 0) for --epochs and
reports images/s of the training epoch (epoch hooks included: STML's re-embedding of the training set)
and the test metrics; the 2-process workers also time gather_batch (forward + backward) of a batch's
embeddings and of STML's four tensors against the step time.
On a 2-core machine two processes cannot beat one process using both cores by much: the figures show
what DDP costs here, not what it gains on GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("supervised", "stml")


def train(name: str, epochs: int, out: Path, threads: int) -> dict:
    from ssml_fast.data import load_dataset
    from ssml_fast.methods import get_method, make_config
    from ssml_fast.train import RunConfig, Trainer, data_info

    torch.set_num_threads(threads)
    split = load_dataset("mnist5k", seed=0)
    cfg = make_config(name, "small", [("bench", {"epochs": epochs})])
    torch.manual_seed(0)
    method = get_method(name)(cfg, data_info(split))
    run = RunConfig(dataset="mnist5k", seed=0, quiet=True, device="cpu", eval_every=0)
    t0 = time.perf_counter()
    result = Trainer(method, split, run, out).fit()
    hist = result["history"]
    return {"images_per_s": statistics.median(r["images_per_s"] for r in hist),
            "epoch_seconds": statistics.median(r["seconds"] for r in hist), "wall": time.perf_counter() - t0,
            "steps": hist[-1]["global_step"] // len(hist),
            "test": {k: result["test"][k] for k in ("recall@1", "map_at_r", "nmi")}, "loss": hist[-1]["loss"]}


def gather_overhead(reps: int = 30) -> dict:
    """Median ms of gather_batch forward + backward on this world (call under torchrun)."""
    from ssml_fast.distributed import gather_batch

    out = {}
    shapes = {"supervised (64 x 64 emb + labels)": [(64, 64)],
              "stml (120 x 256 f, 120 x 512 g, 120 x 512 t, ids)": [(120, 256), (120, 512), (120, 512)]}
    for name, dims in shapes.items():
        times = []
        for _ in range(reps + 3):
            ts = [torch.randn(*d, requires_grad=(i < 2)) for i, d in enumerate(dims)]
            ids = torch.arange(dims[0][0])
            torch.distributed.barrier()
            t0 = time.perf_counter()
            g = gather_batch(*ts, ids)
            sum((x.float() if x.is_floating_point() else x.float()).sum() for x in g if x.requires_grad).backward()
            times.append(time.perf_counter() - t0)
        out[name] = 1e3 * statistics.median(times[3:])
    return out


def worker(out_dir: str, epochs: int) -> None:
    import torch.distributed as dist

    res = {}
    for name in METHODS:
        res[name] = train(name, epochs, Path(out_dir) / f"{name}-2proc", threads=1)
    res["gather_ms"] = gather_overhead()
    if dist.get_rank() == 0:
        (Path(out_dir) / "dist.json").write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_distributed.md"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--work", default="/tmp/bench_distributed")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), __file__, "--worker", str(work), str(args.epochs)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    dist_wall = time.perf_counter() - t0
    dist_res = json.loads((work / "dist.json").read_text())
    single = {t: {name: train(name, args.epochs, work / f"{name}-1proc-{t}t", threads=t) for name in METHODS}
              for t in (2, 1)}
    lines = [f"# 1 vs 2 processes (gloo, CPU)\n",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with other "
             f"sessions (load average {os.getloadavg()[0]:.1f} at the end); torch {torch.__version__}. "
             f"MNIST-5k, train classes 0-4, small presets, seed 0, {args.epochs} epoch(s), global batch = the "
             f"preset's (2 processes: half per rank). Command: `python bench/bench_distributed.py`.\n",
             "| method | run | images/s | epoch s | test R@1 | test MAP@R | test NMI | last loss |",
             "|---|---|---|---|---|---|---|---|"]
    for name in METHODS:
        for label, r in (("1 process, 2 threads", single[2][name]), ("1 process, 1 thread", single[1][name]),
                         ("2 processes x 1 thread", dist_res[name])):
            t = r["test"]
            lines.append(f"| {name} | {label} | {r['images_per_s']:.0f} | {r['epoch_seconds']:.1f} | "
                         f"{t['recall@1']:.4f} | {t['map_at_r']:.4f} | {t['nmi']:.4f} | {r['loss']:.4f} |")
    lines += ["", "All-gather with gradient per step (2 processes, gloo, forward + backward, median of 30):", ""]
    for (k, v), name in zip(dist_res["gather_ms"].items(), METHODS):
        r = dist_res[name]
        step_ms = 1e3 * r["epoch_seconds"] / r["steps"]  # epoch hooks included (STML's re-embedding)
        lines.append(f"- {k}: {v:.2f} ms per step = {100 * v / step_ms:.1f} % of a {name} step "
                     f"({step_ms:.0f} ms, {r['steps']} steps per epoch)")
    lines.append(f"\n2-process launch wall time (torchrun, imports, both methods): {dist_wall:.0f} s")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        i = sys.argv.index("--worker")
        worker(sys.argv[i + 1], int(sys.argv[i + 2]))
    else:
        main()
