"""Memory banks: MemoryBank.update (512 ids x 128-d into a 1,000,000-slot bank) and FeatureQueue.enqueue
(512 x 128 into a 65,536-slot queue), against a bare copy of the same bytes, the unfused PyTorch
sequence, and PML 2.9's CrossBatchMemory.add_to_memory (the peer for the queue; it stores embeddings and
labels, ours embeddings, labels and sample ids).

Run: .venv/bin/python -m pytest bench/bench_memory.py --benchmark-enable --benchmark-group-by=func
or:  .venv/bin/python bench/bench_memory.py   (one process, 1 thread and all threads, prints medians and ratios)
Every implementation runs in the same process on the same (shared, busy) machine: quote ratios, not times.
"""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from ssml_fast.memory import FeatureQueue, MemoryBank
from ssml_fast.ops import bank_momentum_update_

BANK_SLOTS, QUEUE_SLOTS, B, D, MOMENTUM = 1_000_000, 65_536, 512, 128, 0.5
_state: dict = {}


def _bank() -> MemoryBank:
    # One 512 MB bank shared by every bank workload (allocating one per workload would triple the memory).
    if "bank" not in _state:
        bank = MemoryBank(BANK_SLOTS, D)
        bank.bank.copy_(F.normalize(torch.randn(BANK_SLOTS, D), dim=1))
        _state["bank"] = bank
    return _state["bank"]


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(BANK_SLOTS, generator=g)[:B]
    return ids, torch.randn(B, D, generator=g), torch.randint(0, 100, (B,), generator=g)


def make_bank_workload(impl: str):
    bank = _bank()
    ids, feats, _ = _batch(0)
    t = bank.bank
    if impl == "ssml_fused":  # the module call, input checks included
        return lambda: bank.update(ids, feats, MOMENTUM)
    if impl == "ssml_op":  # the raw fused op
        return lambda: torch.ops.ssml_fast.bank_momentum_update_(t, ids, feats, MOMENTUM)
    if impl == "index_copy_floor":  # writes the same bytes, computes nothing
        return lambda: t.index_copy_(0, ids, feats)
    if impl == "torch_unfused":  # gather, lerp, normalise, scatter (no duplicate-id rule)
        def run():
            old = t.index_select(0, ids)
            t.index_copy_(0, ids, F.normalize(torch.lerp(feats, old, MOMENTUM), dim=1))
        return run
    raise ValueError(impl)


def make_queue_workload(impl: str):
    _, emb, labels = _batch(1)
    ids = torch.arange(B)
    if impl == "ssml_enqueue":  # embeddings + labels + ids, input checks included
        q = FeatureQueue(QUEUE_SLOTS, D)
        return lambda: q.enqueue(emb, labels, ids)
    if impl == "ssml_op":  # the raw fused op on the three rings
        rings = [torch.zeros(QUEUE_SLOTS, D), torch.zeros(QUEUE_SLOTS, dtype=torch.long),
                 torch.zeros(QUEUE_SLOTS, dtype=torch.long)]
        ptr = [QUEUE_SLOTS - 100]  # wraps on the first call
        def run():
            ptr[0] = (ptr[0] + B) % QUEUE_SLOTS
            torch.ops.ssml_fast.queue_enqueue_many_(rings, [emb, labels, ids], ptr[0])
        return run
    if impl == "slice_copy_floor":  # the same bytes by contiguous slice copies (no wrap-around handling)
        rings = [torch.zeros(QUEUE_SLOTS, D), torch.zeros(QUEUE_SLOTS, dtype=torch.long),
                 torch.zeros(QUEUE_SLOTS, dtype=torch.long)]
        ptr = [0]
        def run():
            p = ptr[0]
            for ring, rows in zip(rings, (emb, labels, ids)):
                ring[p:p + B].copy_(rows)
            ptr[0] = (p + B) % QUEUE_SLOTS
        return run
    if impl == "pml_add_to_memory":
        from pytorch_metric_learning.losses import ContrastiveLoss, CrossBatchMemory
        xbm = CrossBatchMemory(ContrastiveLoss(), D, memory_size=QUEUE_SLOTS)
        return lambda: xbm.add_to_memory(emb, labels, B)
    raise ValueError(impl)


BANK_IMPLS = ["ssml_fused", "ssml_op", "index_copy_floor", "torch_unfused"]
QUEUE_IMPLS = ["ssml_enqueue", "ssml_op", "slice_copy_floor", "pml_add_to_memory"]


@pytest.mark.parametrize("impl", BANK_IMPLS)
def test_bank_update(benchmark, impl):
    run = make_bank_workload(impl)
    benchmark.extra_info.update(op="bank_update", threads=torch.get_num_threads(), slots=BANK_SLOTS, B=B, D=D)
    benchmark.pedantic(run, rounds=200, warmup_rounds=10)


@pytest.mark.parametrize("impl", QUEUE_IMPLS)
def test_queue_enqueue(benchmark, impl):
    run = make_queue_workload(impl)
    benchmark.extra_info.update(op="queue_enqueue", threads=torch.get_num_threads(), slots=QUEUE_SLOTS, B=B, D=D)
    benchmark.pedantic(run, rounds=200, warmup_rounds=10)


def _median_us(run, reps=300) -> float:
    for _ in range(20):
        run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return sorted(times)[reps // 2] * 1e6


def main():
    print(f"torch {torch.__version__}")
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        print(f"\n=== threads={threads}")
        report()


def report():
    for name, impls, make, base in [
        (f"MemoryBank.update {B} x {D} into {BANK_SLOTS:,} slots", BANK_IMPLS, make_bank_workload, "index_copy_floor"),
        (f"FeatureQueue.enqueue {B} x {D} into {QUEUE_SLOTS:,} slots", QUEUE_IMPLS, make_queue_workload,
         "slice_copy_floor"),
    ]:
        # Interleave the implementations over several passes so machine noise hits them alike.
        med = {impl: [] for impl in impls}
        runs = {impl: make(impl) for impl in impls}
        for _ in range(5):
            for impl in impls:
                med[impl].append(_median_us(runs[impl], reps=100))
        med = {k: sorted(v)[len(v) // 2] for k, v in med.items()}
        print(f"\n{name}")
        for impl in impls:
            print(f"  {impl:20s} {med[impl]:9.1f} us   x{med[impl] / med[base]:.2f} of {base}")


if __name__ == "__main__":
    main()
