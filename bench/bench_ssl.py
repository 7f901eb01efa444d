"""MoCo's queue update + InfoNCE against K = 65,536 keys: ours vs the plain PyTorch formulation (issue 13).

Run: nice -n 10 .venv/bin/python bench/bench_ssl.py       (prints the table, writes bench/results_ssl.md)
SSML_BENCH_THREADS sets torch's intra-op threads (default 1), SSML_BENCH_ROUNDS the timed rounds (default 20),
SSML_BENCH_CASES=all adds batch 256 to the default batch 128.

One call = what a MoCo step does with the queue, from the query / key projections onwards:
- ours: `moco_infonce(q, k, queue.view()[0], T)` (positive logit and the (B, K) GEMM against the queue kept
  apart, log-sum-exp over both, no (B, 1 + K) concatenation), `backward()` to q, then
  `FeatureQueue.enqueue(k)` (one ring copy of embeddings, labels, ids);
- plain: the official facebookresearch/moco `MoCo.forward` tail: l_pos = einsum("nc,nc->n"),
  l_neg = einsum("nc,ck->nk", q, queue.clone().detach()) over a (D, K) queue, logits = cat([l_pos, l_neg]) / T,
  cross_entropy(logits, zeros), `backward()`, and `_dequeue_and_enqueue`: queue[:, ptr:ptr + B] = k.T.
Both get the same q (requires grad), k and queue contents; the losses and q-gradients are checked equal
before timing. Timing is round-robin in one process (bench/_round_robin.py): the implementations alternate
call by call, so the load of this shared machine hits both alike. Peak memory: extra resident memory of one
call in a fresh interpreter (bench/_rss_peak.py), which includes the clone of the queue the official code
makes (`queue.clone().detach()`) and the (B, 1 + K) logits.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))

from _round_robin import round_robin_medians  # noqa: E402
from _machine import machine  # noqa: E402

THREADS = int(os.environ.get("SSML_BENCH_THREADS", "1"))
ROUNDS = int(os.environ.get("SSML_BENCH_ROUNDS", "20"))
RESULTS = Path(__file__).with_name("results_ssl.md")
# (batch, dim, keys): the small preset's batch; SSML_BENCH_CASES=all adds the official B = 256.
CASES = [(128, 128, 65536)] + ([(256, 128, 65536)] if os.environ.get("SSML_BENCH_CASES") == "all" else [])
T = 0.2


def _inputs(b: int, d: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g), dim=1)
    key = F.normalize(torch.randn(b, d, generator=g), dim=1)
    bank = F.normalize(torch.randn(k, d, generator=g), dim=1)
    return q, key, bank


class Ours:
    def __init__(self, b, d, k):
        from ssml_fast.memory import FeatureQueue

        self.q0, self.k, bank = _inputs(b, d, k)
        self.queue = FeatureQueue(k, d)
        self.queue.enqueue(bank)

    def __call__(self):
        from ssml_fast.methods.moco import moco_infonce

        q = self.q0.clone().requires_grad_(True)
        loss = moco_infonce(q, self.k, self.queue.view()[0], T)
        loss.backward()
        self.queue.enqueue(self.k)
        return loss.detach(), q.grad


class Plain:
    """The official code's formulation (queue stored (D, K), as `register_buffer("queue", randn(dim, K))`)."""

    def __init__(self, b, d, k):
        self.q0, self.k, bank = _inputs(b, d, k)
        self.queue = bank.t().contiguous()
        self.ptr = 0

    def __call__(self):
        q = self.q0.clone().requires_grad_(True)
        l_pos = torch.einsum("nc,nc->n", [q, self.k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1) / T
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        b = self.k.shape[0]
        self.queue[:, self.ptr:self.ptr + b] = self.k.t()
        self.ptr = (self.ptr + b) % self.queue.shape[1]
        return loss.detach(), q.grad


def make_workload(impl: str, b: int, d: int, k: int):
    """For bench/_rss_peak.peak_extra_mb_in_child: a warmed-up callable of one implementation."""
    torch.set_num_threads(THREADS)
    fn = (Ours if impl == "ours" else Plain)(b, d, k)
    fn()
    return fn


def check_equal(b, d, k) -> float:
    a, p = Ours(b, d, k), Plain(b, d, k)
    la, ga = a()
    lp, gp = p()
    torch.testing.assert_close(la, lp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga, gp, rtol=1e-4, atol=1e-7)
    return float((la - lp).abs())


def main() -> list:
    from _rss_peak import peak_extra_mb_in_child

    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows = []
    for b, d, k in CASES:
        diff = check_equal(b, d, k)
        ours, plain = Ours(b, d, k), Plain(b, d, k)
        med = round_robin_medians({"ours": ours, "plain": plain}, ROUNDS, warmup=3)
        mem = {impl: peak_extra_mb_in_child("bench_ssl", {"impl": impl, "b": b, "d": d, "k": k},
                                            {"impl": impl, "b": 8, "d": d, "k": 64}) for impl in ("ours", "plain")}
        rows.append((b, d, k, med["ours"] * 1e3, med["plain"] * 1e3, med["plain"] / med["ours"],
                     mem["ours"][0] if mem["ours"] else float("nan"),
                     mem["plain"][0] if mem["plain"] else float("nan"), diff))
        print(rows[-1], flush=True)
    seconds = time.perf_counter() - t0
    lines = [
        "# MoCo queue + InfoNCE against 65,536 keys (bench/bench_ssl.py)",
        "",
        f"Run: `SSML_BENCH_THREADS={THREADS} nice -n 10 .venv/bin/python bench/bench_ssl.py`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s, {ROUNDS} round-robin rounds "
        f"after 3 warm-up rounds. Machine: {machine()}; load average (1 min) {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after (shared machine: absolute times are noisy, the ratio is the figure).",
        "",
        "One call: InfoNCE forward + backward to q and the queue update (see the module docstring). "
        "plain = the official MoCo formulation (einsum, `queue.clone().detach()`, cat, cross_entropy, column "
        "write into a (D, K) queue). Peak extra memory: one call in a fresh interpreter (bench/_rss_peak.py).",
        "",
        "| batch | dim | keys | ours ms | plain ms | plain / ours | ours peak extra MB | plain peak extra MB | |loss diff| |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b, d, k, o, p, r, mo, mp, diff in rows:
        lines.append(f"| {b} | {d} | {k:,} | {o:.2f} | {p:.2f} | {r:.2f}x | {mo:.1f} | {mp:.1f} | {diff:.1e} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
