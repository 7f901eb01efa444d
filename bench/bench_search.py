"""The retrieval service's index: build time, per-query latency and recall@10 against exact search, and the
embedding step's throughput.

    nice -n 10 .venv/bin/python bench/bench_search.py vectors --n 1000000            # the 1M target
    nice -n 10 .venv/bin/python bench/bench_search.py vectors --n 200000 --nlist-factor 1 4
    nice -n 10 .venv/bin/python bench/bench_search.py flat --n 50000 200000          # exact-search latency
    nice -n 10 .venv/bin/python bench/bench_search.py embed --images 2000            # small CNN, images/s

`vectors`: synthetic clustered 128-d vectors (CLUSTERS Gaussian clusters, centres N(0, I/d), points
normalise(centre + sigma * N(0, I/d)); sigma 0.5 by default: within-cluster cosine ~0.8, a trained DML
embedding's regime), stored as float16 on disk as the index stores them. Timed: plan_index + build +
calibrate (ssml_fast.search.faiss_index), i.e. exactly what build_index runs after the embedding step.
Queries are fresh points of the same clusters (not in the index); latency is one query per call
(p50 / p90 / p99 over --queries calls, on one faiss thread as Index.search runs fewer than 16 queries); recall@10 is against exact search over the same float16 vectors.
The process CPU time is printed next to wall time: on a shared machine wall time is inflated by other
processes, CPU time / threads is what a quiet machine would show.
`embed`: build_index end to end (PNG decode + transform + embed + float16 write + flat index) on a folder
of generated 28 x 28 grey PNGs with a bundled-size small CNN (supervised, small preset, untrained weights:
throughput does not depend on them), for DataLoader workers 0 and 2.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLUSTERS = 10_000
DIM = 128


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def clustered(n: int, sigma: float, seed: int, chunk: int = 100_000) -> np.ndarray:
    """(n, DIM) float32 unit vectors around CLUSTERS fixed centres (seeded by `seed` for the points only)."""
    centres = np.random.default_rng(12345).standard_normal((CLUSTERS, DIM), dtype=np.float32) / np.sqrt(DIM)
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centres[rng.integers(0, CLUSTERS, m)]
        x += (sigma / np.sqrt(DIM)) * rng.standard_normal((m, DIM), dtype=np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def on_disk(x: np.ndarray, folder: Path) -> np.ndarray:
    path = folder / "vectors.f16"
    mm = np.memmap(path, dtype="<f2", mode="w+", shape=x.shape)
    for s in range(0, len(x), 100_000):
        mm[s:s + 100_000] = x[s:s + 100_000]
    mm.flush()
    del mm
    return np.memmap(path, dtype="<f2", mode="r", shape=x.shape)


def latencies(index, queries: np.ndarray, k: int = 10, clock=time.perf_counter) -> np.ndarray:
    """Milliseconds per one-query call; clock=time.thread_time gives this thread's CPU time instead (with one
    faiss thread: the work of the call, not inflated by other processes on a shared machine)."""
    from ssml_fast.search.faiss_index import few_queries

    out = []
    for q in queries:
        t = clock()
        with few_queries(1):   # as Index.search runs a single query
            index.search(q[None], k)
        out.append(clock() - t)
    return np.array(out) * 1e3


def one_thread_cpu_ms(index, queries: np.ndarray) -> np.ndarray:
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return latencies(index, queries, clock=time.thread_time)
    finally:
        faiss.omp_set_num_threads(threads)


def cmd_vectors(args) -> None:
    import faiss

    from ssml_fast.search import faiss_index as fi

    print(f"# vectors: n={args.n:,} d={DIM} clusters={CLUSTERS} sigma={args.sigma}; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads; {load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = on_disk(clustered(args.n, args.sigma, seed=0), Path(tmp))
        queries = clustered(args.queries, args.sigma, seed=1)
        t = time.perf_counter()
        _, truth = fi.exact_search(queries, base, 10, "cosine")
        print(f"exact top-10 of {len(queries)} queries: {time.perf_counter() - t:.1f} s", flush=True)
        for factor in args.nlist_factor:
            fi.NLIST_FACTOR = factor
            c0, t0 = cpu_seconds(), time.perf_counter()
            plan = fi.plan_index(args.n, args.kind, "cosine")
            index = fi.build(plan, base)
            t_build, c_build = time.perf_counter() - t0, cpu_seconds() - c0
            plan = fi.calibrate(index, plan, base)
            t_all, c_all = time.perf_counter() - t0, cpu_seconds() - c0
            print(f"\n## {plan.describe()}  (nlist factor {factor})\nbuild {t_build:.1f} s wall / {c_build:.1f} s CPU; "
                  f"+ calibration {t_all:.1f} s wall / {c_all:.1f} s CPU; {load()}", flush=True)
            params = sorted({plan.nprobe or plan.ef_search} | set(args.sweep))
            print("| nprobe/efSearch | recall@10 | p50 ms | p90 ms | p99 ms | CPU ms/query p50, 1 thread |")
            print("|---|---|---|---|---|---|")
            for p in params:
                if plan.kind == "ivf" and p > plan.nlist:
                    continue
                trial = fi.IndexPlan(**{**plan.__dict__, ("nprobe" if plan.kind == "ivf" else "ef_search"): p})
                fi.apply_search_params(index, trial)
                _, found = index.search(queries, 10)
                rec = fi.recall_at_k(found, truth)
                ms = latencies(index, queries)
                ms1 = one_thread_cpu_ms(index, queries[:200])
                mark = " (auto)" if p == (plan.nprobe or plan.ef_search) else ""
                print(f"| {p}{mark} | {rec:.4f} | {np.median(ms):.2f} | {np.percentile(ms, 90):.2f} | "
                      f"{np.percentile(ms, 99):.2f} | {np.median(ms1):.2f} |", flush=True)
            del index


def cmd_flat(args) -> None:
    import faiss

    from ssml_fast.search import faiss_index as fi

    print(f"# exact (flat) search latency, d={DIM}; {load()}")
    print("| n | p50 ms | p90 ms | CPU ms/query p50, 1 thread |\n|---|---|---|---|")
    for n in args.n:
        x = clustered(n, 0.5, seed=0)
        index = fi.build(fi.IndexPlan("flat"), x)
        q = clustered(args.queries, 0.5, seed=1)
        ms = latencies(index, q)
        ms1 = one_thread_cpu_ms(index, q)
        print(f"| {n:,} | {np.median(ms):.2f} | {np.percentile(ms, 90):.2f} | {np.median(ms1):.2f} |", flush=True)


def _small_checkpoint(path: Path, image_shape=(1, 28, 28)) -> Path:
    from dataclasses import asdict

    import torch

    from ssml_fast.methods import get_method, make_config
    from ssml_fast.methods.base import DataInfo
    from ssml_fast.train import RunConfig, save_checkpoint

    info = DataInfo(image_shape=image_shape, mean=0.13, std=0.31, num_train=1000, train_classes=(0, 1, 2, 3, 4))
    config = make_config("supervised", "small", [])
    torch.manual_seed(0)
    method = get_method("supervised")(config, info)
    save_checkpoint(path, {"method_name": "supervised", "method_config": asdict(config),
                           "run_config": asdict(RunConfig(dataset="mnist5k")), "model_info": asdict(info),
                           "method": method.state_dict()})
    return path


def cmd_embed(args) -> None:
    from PIL import Image

    from ssml_fast.search import AddReport, build_index

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(args.images):
            sub = tmp / "photos" / f"c{i % 10}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(sub / f"{i:05d}.png")
        ck = _small_checkpoint(tmp / "ck.pt")
        print(f"# embedding step: {args.images} PNG 28x28 grey, small CNN (supervised small preset), CPU, "
              f"batch {args.batch_size}; {load()}")
        print("| DataLoader workers | images/s | wall s | CPU s (incl. workers) |\n|---|---|---|---|")
        for workers in args.workers:
            report = AddReport()
            c0, t0 = cpu_seconds(), time.perf_counter()
            build_index(ck, tmp / "photos", tmp / f"ix{workers}", batch_size=args.batch_size, num_workers=workers,
                        show_progress=False, report=report)
            wall = time.perf_counter() - t0
            print(f"| {workers} | {report.added / wall:.0f} | {wall:.1f} | {cpu_seconds() - c0:.1f} |", flush=True)


def main(argv=None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vectors")
    v.add_argument("--n", type=int, default=1_000_000)
    v.add_argument("--sigma", type=float, default=0.5)
    v.add_argument("--queries", type=int, default=500)
    v.add_argument("--kind", default="auto")
    v.add_argument("--nlist-factor", type=float, nargs="+", default=[None])
    v.add_argument("--sweep", type=int, nargs="*", default=[4, 8, 16, 32, 64])
    f = sub.add_parser("flat")
    f.add_argument("--n", type=int, nargs="+", default=[50_000, 200_000])
    f.add_argument("--queries", type=int, default=200)
    e = sub.add_parser("embed")
    e.add_argument("--images", type=int, default=2000)
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = p.parse_args(argv)
    if args.cmd == "vectors" and args.nlist_factor == [None]:
        from ssml_fast.search import faiss_index

        args.nlist_factor = [faiss_index.NLIST_FACTOR]
    {"vectors": cmd_vectors, "flat": cmd_flat, "embed": cmd_embed}[args.cmd](args)


if __name__ == "__main__":
    main()
