"""Validation at the op boundary (issue 16): top-K list rules, bank ids and aliasing, size arguments far out
of range (in a subprocess, so a crash fails the test instead of killing pytest)."""
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from ssml_fast.ops import bank_momentum_update_, kreciprocal_rerank, topk_neighbors

topk_op = torch.ops.ssml_fast.kreciprocal_rerank_topk
topk_gpu_algorithm = torch.ops.ssml_fast._kreciprocal_rerank_gpu_algorithm_topk


def lists(n=20, k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return topk_neighbors(torch.randn(n, 4, generator=g), k)


def broken(kind):
    d, i = lists()
    d, i = d.clone(), i.clone()
    if kind == "no_self":
        i[3] = torch.tensor([x for x in range(20) if x != 3][:8])
    elif kind == "negative":
        d[2, 0] = -1e-6
    elif kind == "nan":
        d[5, 4] = float("nan")
    elif kind == "inf":
        d[5, 7] = float("inf")
    elif kind == "unsorted":
        d[1, 2], d[1, 3] = d[1, 3] + 1, d[1, 2]
    return d, i


@pytest.mark.parametrize("kind,needle", [("no_self", "itself"), ("negative", ">= 0"), ("nan", "finite"),
                                         ("inf", "finite"), ("unsorted", "non-decreasing")])
def test_topk_lists_breaking_a_rule_are_rejected(kind, needle):
    d, i = broken(kind)
    with pytest.raises(ValueError, match=needle):
        kreciprocal_rerank((d, i), k1=6, k2=2, num_query=5)
    for op in (topk_op, topk_gpu_algorithm):
        with pytest.raises(ValueError, match=needle):
            op(d, i, 5, 6, 2, 0.3)


def test_valid_lists_still_pass():
    d, i = lists()
    out = kreciprocal_rerank((d, i), k1=6, k2=2, num_query=5)
    assert torch.equal(out, topk_gpu_algorithm(d, i, 5, 6, 2, 0.3))


def test_features_with_nan_are_rejected_by_the_op():
    x = torch.randn(12, 3)
    x[4, 1] = float("nan")
    for call in (lambda: kreciprocal_rerank(x[:3], x[3:]),
                 lambda: torch.ops.ssml_fast.kreciprocal_rerank(x[:3], x[3:], 5, 2, 0.3),
                 lambda: torch.ops.ssml_fast._kreciprocal_rerank_gpu_algorithm(x[:3], x[3:], 5, 2, 0.3)):
        with pytest.raises(ValueError, match="NaN or infinite"):
            call()


def test_bank_ids_out_of_range_raise_through_the_op():
    bank = F.normalize(torch.randn(5, 3), dim=1)
    for ids in ([5], [-1], [0, 7]):
        with pytest.raises(ValueError, match="ids"):
            bank_momentum_update_(bank, torch.tensor(ids), torch.randn(len(ids), 3), 0.5)
        with pytest.raises(ValueError, match="ids"):
            torch.ops.ssml_fast.bank_momentum_update_(bank, torch.tensor(ids), torch.randn(len(ids), 3), 0.5)


def run_isolated(code: str) -> str:
    """Runs code in a fresh interpreter; a segfault or abort fails the test with its output."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout


HUGE = ["2**31", "2**62", "2**63 - 1", "2**63", "2**80"]


def test_huge_k1_k2_are_truncated_not_crashing():
    out = run_isolated(f"""
        import torch, ssml_fast
        from ssml_fast.ops import kreciprocal_rerank, topk_neighbors
        x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
        d, i = topk_neighbors(x, 30)
        ref = kreciprocal_rerank(x[:6], x[6:], k1=60, k2=30)
        ref2 = kreciprocal_rerank(x[:6], x[6:], k1=60, k2=60)
        ref_lists = kreciprocal_rerank((d, i), k1=60, k2=3, num_query=6)
        for huge in [{", ".join(HUGE)}]:
            assert torch.equal(kreciprocal_rerank(x[:6], x[6:], k1=huge, k2=30), ref), "features"
            assert torch.equal(kreciprocal_rerank(x[:6], x[6:], k1=huge, k2=huge), ref2), "features k2"
            assert torch.equal(kreciprocal_rerank((d, i), k1=huge, k2=3, num_query=6), ref_lists), "lists"
            print("ok")
    """)
    assert out.split() == ["ok"] * len(HUGE)


def test_direct_op_calls_with_extreme_k1():
    # Straight into torch.ops (no Python clamp): the op clamps or raises, never overflows k1 + 1.
    out = run_isolated("""
        import torch, ssml_fast
        from ssml_fast.ops import topk_neighbors
        x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
        d, i = topk_neighbors(x, 30)
        for k1 in (2**63 - 1, 2**62, -2**63):
            for call in (lambda: torch.ops.ssml_fast.kreciprocal_rerank(x[:6], x[6:], k1, 2, 0.3),
                         lambda: torch.ops.ssml_fast.kreciprocal_rerank_topk(d, i, 6, k1, 2, 0.3),
                         lambda: torch.ops.ssml_fast._kreciprocal_rerank_gpu_algorithm(x[:6], x[6:], k1, 2, 0.3),
                         lambda: torch.ops.ssml_fast._kreciprocal_rerank_gpu_algorithm_topk(d, i, 6, k1, 2, 0.3)):
                try:
                    out = call()
                    assert out.shape == (6, 24) and torch.isfinite(out).all()
                    print("value" if k1 > 0 else "wrong")
                except ValueError as e:
                    assert "k1" in str(e), e
                    print("raised" if k1 < 0 else "wrong")
    """)
    assert out.split() == ["value"] * 8 + ["raised"] * 4


SIZE_CALLS = [
    ("contextual_similarity(x, {v})", "k"),
    ("topk_neighbors(x, {v})", "k"),
    ("knn_search(x, {v})", "k"),
    ("retrieval_metrics(x, labels, ks=({v},), nmi=False)", "ks"),
    ("MemoryBank(4, 2).topk(x[:, :2], {v})", "k"),
]


def test_huge_size_arguments_raise_a_clear_error():
    calls = [c.format(v=v) for c, _ in SIZE_CALLS for v in ("2**63 - 1", "2**80")]
    out = run_isolated(f"""
        import torch, ssml_fast
        from ssml_fast.ops import contextual_similarity, topk_neighbors
        from ssml_fast.evaluation import knn_search, retrieval_metrics
        from ssml_fast.memory import MemoryBank
        x = torch.randn(30, 4)
        labels = torch.arange(30) % 3
        for call in {calls!r}:
            try:
                eval(call)
                print("accepted")
            except (ValueError, TypeError) as e:
                print("raised:", str(e).splitlines()[0])
    """)
    lines = out.strip().splitlines()
    needles = [n for _, n in SIZE_CALLS for _ in range(2)]
    assert len(lines) == len(needles)
    for line, needle in zip(lines, needles):
        assert line.startswith("raised:") and needle in line, line


def test_huge_chunk_size_is_harmless():
    out = run_isolated("""
        import torch, ssml_fast
        from ssml_fast.evaluation import knn_search, retrieval_metrics
        x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
        labels = torch.arange(30) % 3
        for huge in (2**63 - 1, 2**80):
            a = knn_search(x, 3, chunk_size=huge)
            b = knn_search(x, 3)
            assert torch.equal(a[1], b[1])
            assert retrieval_metrics(x, labels, chunk_size=huge, nmi=False) == retrieval_metrics(x, labels, nmi=False)
            print("ok")
    """)
    assert out.split() == ["ok", "ok"]


def test_lists_of_exact_copies_may_leave_self_out():
    # 20 identical rows, lists by (distance, lower index): rows 5.. do not list themselves, but every listed
    # distance is 0, so the lists are valid (the copies tie with i itself).
    d = torch.zeros(20, 5)
    i = torch.arange(5).repeat(20, 1)
    out = kreciprocal_rerank((d, i), k1=4, k2=2, num_query=6)
    assert torch.equal(out, topk_gpu_algorithm(d, i, 6, 4, 2, 0.3))
    d2 = d.clone()
    d2[7, 4] = 1.0  # no longer all 0: row 7 must list 7
    with pytest.raises(ValueError, match="itself"):
        kreciprocal_rerank((d2, i), k1=4, k2=2, num_query=6)
