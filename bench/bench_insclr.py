"""InsCLR measurements: the small preset on a validation split, the mining step against a loop, pool building.

Run: .venv/bin/python bench/bench_insclr.py validate [--set key=value ...] [--threads 2]
     .venv/bin/python bench/bench_insclr.py test                      # the default mnist5k split, seed 0
     .venv/bin/python bench/bench_insclr.py mining                    # vectorised vs per-group loop
     .venv/bin/python bench/bench_insclr.py pool [--n 100000]         # faiss pool build at N x 128

`validate` trains on mnist5k classes 0-2 and scores on held-out classes 3-4 (bench/select_presets.py's
split: classes 5-9 are never loaded); only this mode may be used to choose the small preset.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _method(split, overrides, seed):
    from ssml_fast.methods import make_config, register_method
    from ssml_fast.methods.insclr import InsCLR
    from ssml_fast.train import data_info

    register_method(InsCLR)
    cfg = make_config("insclr", "small", [("--set", overrides)])
    torch.manual_seed(seed)
    return InsCLR(cfg, data_info(split))


def _train(split, overrides, seed, eval_every=1):
    from ssml_fast.train import RunConfig, Trainer

    m = _method(split, overrides, seed)
    res = Trainer(m, split, RunConfig(seed=seed, quiet=True, eval_every=eval_every, device="cpu")).fit()
    return m, res


def validate(overrides, seed):
    from select_presets import validation_split
    from ssml_fast.evaluation import retrieval_metrics
    from ssml_fast.methods import get_method, make_config
    from ssml_fast.train import data_info, embed_images

    split = validation_split()
    torch.manual_seed(seed)
    net = get_method("supervised")(make_config("supervised", "small"), data_info(split))
    emb = embed_images(net.embed, net, split.test_images, "cpu")
    u = retrieval_metrics(emb, split.test_labels, metric="cosine")
    t0 = time.perf_counter()
    m, res = _train(split, overrides, seed, eval_every=0)
    v = res["test"]  # the split's test fields hold the validation classes 3-4
    print(json.dumps({"overrides": overrides, "seed": seed, "val_map_at_r": round(v["map_at_r"], 4),
                      "val_recall@1": round(v["recall@1"], 4), "val_nmi": round(v["nmi"], 4),
                      "untrained_map_at_r": round(u["map_at_r"], 4), "untrained_recall@1": round(u["recall@1"], 4),
                      "train_seconds": round(res["train_seconds"], 1), "wall": round(time.perf_counter() - t0, 1),
                      "losses": [round(h["loss"], 2) for h in res["history"]],
                      "accepted": [round(h.get("accepted", 1), 3) for h in res["history"]],
                      "mem_pos": [round(h.get("memory_positives", 0), 1) for h in res["history"]]}))


def test_run(overrides, seed):
    from ssml_fast.data import load_dataset

    split = load_dataset("mnist5k", seed=seed)
    m, res = _train(split, overrides, seed)
    t = res["test"]
    for h in res["history"]:
        print(f"  {h['stage']:>5} epoch {h['epoch']}: loss {h['loss']:.3f} val MAP@R {h.get('val_map_at_r', float('nan')):.4f} "
              f"({h['seconds']:.1f}s)")
    print(json.dumps({"overrides": overrides, "seed": seed, "test_recall@1": round(t["recall@1"], 4),
                      "test_map_at_r": round(t["map_at_r"], 4), "test_nmi": round(t["nmi"], 4),
                      "train_seconds": round(res["train_seconds"], 1)}))


def per_group_loop(pool_idx, pool_sim, members, accepted, feats, pt, nt, et, rounds, k):
    """The official structure: a Python loop over groups, tensor ops inside each (thresholded-mean score,
    rejected members excluded). Returns each group's positives (P0 ascending, then selections)."""
    out = []
    for g in range(members.shape[0]):
        mem, acc = members[g], members[g][accepted[g]]
        ps = pool_sim[acc]
        pb = (ps >= pt).long().cumprod(1).sum(1)
        nb = (ps >= nt).long().cumprod(1).sum(1)
        j = torch.arange(pool_idx.shape[1])
        rows = pool_idx[acc]
        p0 = torch.unique(rows[j < pb[:, None]])
        p0 = p0[~torch.isin(p0, mem)]
        cand = torch.unique(rows[(j >= pb[:, None]) & (j < nb[:, None])])
        cand = cand[~torch.isin(cand, mem) & ~torch.isin(cand, p0)]
        q = feats[torch.cat([acc, p0])]
        fc = feats[cand]
        s = fc @ q.T
        w = s >= et
        total, count = (s * w).sum(1), w.sum(1).double()
        chosen = torch.zeros(len(cand), dtype=torch.bool)
        picks = []
        for _ in range(rounds):
            ok = ~chosen & (count > 0)
            score = torch.where(ok, total / count.clamp(min=1), torch.tensor(float("-inf"), dtype=total.dtype))
            order = torch.sort(score, descending=True, stable=True).indices[:k]
            order = order[torch.isfinite(score[order])]
            chosen[order] = True
            picks.append(cand[order])
            s2 = fc @ feats[cand[order]].T
            w2 = s2 >= et
            total, count = total + (s2 * w2).sum(1), count + w2.sum(1).double()
        out.append(torch.cat([p0] + picks).tolist())
    return out


def mining(repeats=7):
    """The mining step (mine_positives) against the per-group loop on one batch, interleaved (vectorised, loop,
    vectorised, ...) and timed in process CPU time, so a loaded machine slows both alike; `--threads` sets
    the intra-op threads (1 thread: the ratio of the work itself)."""
    from ssml_fast.memory.positive_mining import mine_positives
    N, P, D, G, M = 100_000, 500, 128, 64, 4
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(N // 20, D, generator=gen)
    feats = torch.nn.functional.normalize(centres.repeat_interleave(20, 0) + 0.6 * torch.randn(N, D, generator=gen), dim=1)
    # Pools: exact top-P by faiss, as the method builds them.
    from ssml_fast.neighbors import knn_search

    sim, pool = knn_search(feats, P, metric="inner_product")
    anchors = torch.randperm(N, generator=gen)[:G]
    members = torch.cat([anchors[:, None], pool[anchors, :M - 1]], 1)
    accepted = torch.rand(G, M, generator=gen) < 0.8
    accepted[:, 0] = True
    kw = dict(positive_threshold=0.75, negative_threshold=0.5, expansion_threshold=0.6, rounds=4, k=5)
    m = mine_positives(pool, sim, members, accepted, feats, **kw)  # warm-up
    times, loop_times = [], []
    for _ in range(repeats):
        t0 = time.process_time()
        m = mine_positives(pool, sim, members, accepted, feats, **kw)
        times.append(time.process_time() - t0)
        t0 = time.process_time()
        ref = per_group_loop(pool, sim, members, accepted, feats, 0.75, 0.5, 0.6, 4, 5)
        loop_times.append(time.process_time() - t0)
    t_vec, t_ref = sorted(times)[repeats // 2], sorted(loop_times)[repeats // 2]
    same = [[v for v in row if v >= 0] for row in m.positives.tolist()] == ref
    n_pos = sum(len(r) for r in ref) / G
    n_c = float((m.candidates >= 0).sum()) / G
    print(json.dumps({"groups": G, "members": M, "pool": P, "memory": N, "dim": D, "threads": torch.get_num_threads(),
                      "vectorised_cpu_ms_median": round(t_vec * 1e3, 1), "per_group_loop_cpu_ms_median": round(t_ref * 1e3, 1),
                      "speedup": round(t_ref / t_vec, 1), "same_positives": same, "positives_per_group": n_pos,
                      "candidates_per_group": n_c}))


def pool(n):
    from ssml_fast.neighbors import knn_search

    feats = torch.nn.functional.normalize(torch.randn(n, 128, generator=torch.Generator().manual_seed(0)), dim=1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    sim, idx = knn_search(feats, 500, metric="inner_product", use_gpu=False)
    dt = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "dim": 128, "pool": 500, "seconds": round(dt, 1), "threads": torch.get_num_threads(),
                      "result_mb": round((sim.numel() * 4 + idx.numel() * 8) / 2**20, 1),
                      "peak_rss_growth_mb": round((rss1 - rss0) / 1024, 1), "peak_rss_mb": round(rss1 / 1024, 1)}))


def main(argv=None):
    from ssml_fast.config import ConfigError  # noqa: F401
    from ssml_fast.config import parse_set

    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["validate", "test", "mining", "pool"])
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=100_000)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    overrides = parse_set(a.set)
    if a.mode == "validate":
        validate(overrides, a.seed)
    elif a.mode == "test":
        test_run(overrides, a.seed)
    elif a.mode == "mining":
        mining()
    else:
        pool(a.n)


if __name__ == "__main__":
    main()
