"""retrieval_metrics / knn_search against a brute-force reference, PML's AccuracyCalculator and hand cases."""
import math
import warnings

import faiss
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ssml_fast.evaluation import gpu_available, knn_search, retrieval_metrics


# ---------------------------------------------------------------- plain reference (reads like thesis 4.3 / PML)
def reference_metrics(q, ql, ks, metric="euclidean", g=None, gl=None):
    """Loops over queries; full distance rows in float64; stable sort."""
    q = np.asarray(q, np.float64)
    loo = g is None
    g, gl = (q, ql) if loo else (np.asarray(g, np.float64), gl)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    sums = {f"recall@{k}": 0.0 for k in ks}
    sums.update(precision_at_1=0.0, r_precision=0.0, map_at_r=0.0)
    n = 0
    for i in range(len(q)):
        if metric == "euclidean":
            d = np.sqrt(((g - q[i]) ** 2).sum(1))
        else:
            d = -(g @ q[i])
        others = np.array([j for j in range(len(g)) if not (loo and j == i)])
        ranked = others[np.argsort(d[others], kind="stable")]
        rel = gl[ranked] == ql[i]
        r = int(rel.sum())
        if r == 0:
            continue
        n += 1
        for k in ks:
            sums[f"recall@{k}"] += float(rel[:k].any())
        sums["precision_at_1"] += float(rel[0])
        sums["r_precision"] += rel[:r].sum() / r
        hits = 0
        ap = 0.0
        for pos in range(r):
            if rel[pos]:
                hits += 1
                ap += hits / (pos + 1)
        sums["map_at_r"] += ap / r
    return {key: v / n if n else float("nan") for key, v in sums.items()}


def tie_sensitive_queries(q, ql, g=None, gl=None, metric="euclidean", max_k=16, rtol=1e-6):
    """Queries whose metrics could change if float32 rounding (faiss) swapped two near-equal distances:
    a gap below rtol between neighbours of different relevance, within the first max(max_k, R) + 1."""
    q = np.asarray(q, np.float64)
    loo = g is None
    g, gl = (q, ql) if loo else (np.asarray(g, np.float64), gl)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        d = -(q @ g.T)
    else:
        d = np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1))
    if loo:
        np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, : (d.shape[1] - loo)]
    ds = np.take_along_axis(d, order, 1)
    rel = gl[order] == np.asarray(ql)[:, None]
    depth = np.maximum(max_k, rel.sum(1))[:, None]
    near = (np.diff(ds, axis=1) < rtol * (1 + np.abs(ds[:, 1:]))) & (rel[:, 1:] != rel[:, :-1])
    return int((near & (np.arange(near.shape[1]) < depth)).any(axis=1).sum())


def clustered(n, d, n_classes, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    centers = rng.normal(size=(n_classes, d)) * 2.0
    emb = centers[labels] + spread * rng.normal(size=(n, d))
    return emb.astype(np.float32), labels


def assert_metrics_close(got, want, tol=1e-12):
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=tol), key


# ---------------------------------------------------------------- hand-computed cases
def test_hand_computed_leave_one_out():
    # 1-D points; distances per query worked out by hand in the comments.
    x = torch.tensor([[0.0], [1.0], [2.5], [10.0], [11.5]])
    y = torch.tensor([0, 0, 1, 1, 0])
    # q0: 1(l0) 2.5(l1) 10(l1) 11.5(l0), R=2 -> P@1=1, RP=1/2, AP@R=1/2
    # q1: 0(l0) 2.5(l1) 10 11.5,        R=2 -> P@1=1, RP=1/2, AP@R=1/2
    # q2: 1(l0) 0(l0) 10(l1) 11.5,      R=1 -> first hit at rank 3
    # q3: 11.5(l0) 2.5(l1) 1 0,         R=1 -> first hit at rank 2
    # q4: 10(l1) 2.5(l1) 1(l0) 0(l0),   R=2 -> first hit at rank 3
    m = retrieval_metrics(x, y, ks=(1, 2, 3, 4), nmi=False)
    assert m["recall@1"] == pytest.approx(2 / 5)
    assert m["recall@2"] == pytest.approx(3 / 5)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["precision_at_1"] == pytest.approx(2 / 5)
    assert m["r_precision"] == pytest.approx(1 / 5)
    assert m["map_at_r"] == pytest.approx(1 / 5)
    assert "nmi" not in m


def test_hand_computed_query_gallery_split():
    # Gallery labels by distance from the query at 0: l0, l1, l0, l0, l1 -> R=3.
    q = torch.tensor([[0.0]])
    g = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    m = retrieval_metrics(q, torch.tensor([0]), ks=(1, 2), gallery=g, gallery_labels=torch.tensor([0, 1, 0, 0, 1]),
                          nmi=False)
    assert m["recall@1"] == 1.0 and m["precision_at_1"] == 1.0
    assert m["r_precision"] == pytest.approx(2 / 3)
    assert m["map_at_r"] == pytest.approx((1 / 1 + 2 / 3) / 3)


def test_cosine_ranks_by_angle_not_length():
    x = torch.tensor([[1.0, 0.0], [10.0, 1.0], [0.0, 0.5], [0.1, 3.0]])
    y = torch.tensor([0, 0, 1, 1])
    m = retrieval_metrics(x, y, ks=(1,), metric="cosine", nmi=False)
    assert m["precision_at_1"] == 1.0
    e = retrieval_metrics(x, y, ks=(1,), metric="euclidean", nmi=False)
    assert e["precision_at_1"] < 1.0


def test_nmi_perfect_clusters_and_single_class():
    x, y = clustered(120, 8, 4, seed=0, spread=0.01)
    # One k-means run can merge two clusters (a local minimum); more restarts find the separation.
    assert retrieval_metrics(x, y, kmeans_n_init=10)["nmi"] == pytest.approx(1.0)
    one = retrieval_metrics(x, np.zeros(120, dtype=np.int64))
    assert math.isfinite(one["nmi"]) and one["recall@1"] == 1.0


# ---------------------------------------------------------------- against the brute-force reference
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("split", [False, True])
def test_matches_reference(metric, split):
    x, y = clustered(300, 16, 12, seed=1, spread=2.0)
    ks = (1, 2, 4, 8, 16)
    if split:
        q, ql, g, gl = x[:100], y[:100], x[100:], y[100:]
        got = retrieval_metrics(q, ql, ks, metric, gallery=g, gallery_labels=gl, nmi=False)
        want = reference_metrics(q, ql, ks, metric, g, gl)
    else:
        q, ql, g, gl = x, y, None, None
        got = retrieval_metrics(x, y, ks, metric, nmi=False)
        want = reference_metrics(x, y, ks, metric)
    # A query's contribution to a metric is at most 1 / Nq: allow that much per tie-sensitive query.
    assert_metrics_close(got, want, tie_sensitive_queries(q, ql, g, gl, metric) / len(q) + 1e-12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 40),
    n_classes=st.integers(1, 8),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    metric=st.sampled_from(["euclidean", "cosine"]),
    chunk=st.sampled_from([None, 1, 3]),
)
def test_property_matches_reference(n, n_classes, d, seed, metric, chunk):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, n_classes, n)
    assume(tie_sensitive_queries(x, y, metric=metric) == 0)
    ks = tuple(sorted({1, min(3, n - 1), n - 1}))
    want = reference_metrics(x, y, ks, metric)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = retrieval_metrics(x, y, ks, metric, nmi=False, chunk_size=chunk)
    for key, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[key])
        else:
            assert got[key] == pytest.approx(value, abs=1e-9), key


def test_chunking_does_not_change_results():
    x, y = clustered(257, 8, 10, seed=2)
    full = retrieval_metrics(x, y, nmi=False)
    assert_metrics_close(retrieval_metrics(x, y, nmi=False, chunk_size=7), full)
    assert_metrics_close(retrieval_metrics(x, y, nmi=False, chunk_size=1), full)


def test_large_r_searches_deep_enough():
    # One class holds most samples: R is far above max(ks), so MAP@R needs a deep search.
    x, _ = clustered(200, 4, 1, seed=3)
    y = np.where(np.arange(200) < 180, 0, 1)
    tol = tie_sensitive_queries(x, y) / len(x) + 1e-12
    assert_metrics_close(retrieval_metrics(x, y, nmi=False), reference_metrics(x, y, (1, 2, 4, 8)), tol)


# ---------------------------------------------------------------- against pytorch-metric-learning 2.9
def pml_metrics(q, ql, metric, g=None, gl=None):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import FaissKNN

    index = faiss.IndexFlatL2 if metric == "euclidean" else faiss.IndexFlatIP
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r", "NMI"),
        k="max_bin_count", device=torch.device("cpu"), knn_func=FaissKNN(index_init_fn=index),
    )
    args = (torch.from_numpy(q), torch.from_numpy(ql))
    if g is None:
        return calc.get_accuracy(*args)
    return calc.get_accuracy(*args, torch.from_numpy(g), torch.from_numpy(gl), ref_includes_query=False)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("split", [False, True])
def test_matches_pml_accuracy_calculator(metric, split):
    x, y = clustered(1500, 32, 40, seed=4, spread=3.0)
    if metric == "cosine":  # PML ranks raw inner products: give both the same unit rows
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if split:
        q, ql, g, gl = x[:500], y[:500], x[500:], y[500:]
        ours = retrieval_metrics(q, ql, (1,), metric, gallery=g, gallery_labels=gl)
        pml = pml_metrics(q, ql, metric, g, gl)
    else:
        ours = retrieval_metrics(x, y, (1,), metric)
        pml = pml_metrics(x, y, metric)
    assert 0.05 < pml["precision_at_1"] < 0.95  # a non-trivial embedding
    # Same faiss search on the same float32 rows: identical neighbours up to summation order.
    tol = 1e-9
    assert ours["precision_at_1"] == pytest.approx(pml["precision_at_1"], abs=tol)
    assert ours["recall@1"] == ours["precision_at_1"]
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=tol)
    assert ours["map_at_r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=tol)
    assert ours["nmi"] == pytest.approx(pml["NMI"], abs=1e-6)


def test_lone_queries_left_out_with_warning():
    x, _ = clustered(30, 4, 3, seed=5)
    y = np.array([0] * 10 + [1] * 19 + [2])  # label 2 has no other sample
    with pytest.warns(UserWarning, match="1 of 30 queries"):
        m = retrieval_metrics(x, y, nmi=False)
    assert_metrics_close(m, reference_metrics(x, y, (1, 2, 4, 8)), tie_sensitive_queries(x, y) / 30 + 1e-12)
    with pytest.warns(UserWarning):
        nan = retrieval_metrics(x[:3], np.array([0, 1, 2]), ks=(1,), nmi=False)
    assert all(math.isnan(v) for v in nan.values())


# ---------------------------------------------------------------- knn_search
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "inner_product"])
def test_knn_search_matches_brute_force(metric):
    x, _ = clustered(200, 8, 5, seed=6)
    g, _ = clustered(150, 8, 5, seed=7)
    xt, gt = torch.from_numpy(x).double(), torch.from_numpy(g).double()
    if metric == "euclidean":
        want_s, want_i = torch.cdist(xt, gt).topk(5, largest=False)
    else:
        if metric == "cosine":
            xt, gt = torch.nn.functional.normalize(xt, dim=1), torch.nn.functional.normalize(gt, dim=1)
        want_s, want_i = (xt @ gt.T).topk(5)
    s, i = knn_search(x, 5, g, metric=metric, chunk_size=64)
    assert i.dtype == torch.int64 and s.dtype == torch.float32 and i.shape == (200, 5)
    assert torch.equal(i, want_i)
    torch.testing.assert_close(s.double(), want_s, rtol=1e-4, atol=1e-4)


def test_leave_one_out_never_returns_self_even_with_duplicates():
    x = np.repeat(np.random.default_rng(0).normal(size=(10, 3)), 4, axis=0).astype(np.float32)
    _, idx = knn_search(x, 5)
    assert not (idx == torch.arange(40)[:, None]).any()
    assert (idx >= 0).all() and (idx < 40).all()


@pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a GPU")
def test_gpu_index_matches_cpu():
    x, y = clustered(500, 16, 10, seed=8)
    assert retrieval_metrics(x, y, use_gpu=True, nmi=False) == retrieval_metrics(x, y, use_gpu=False, nmi=False)


# ---------------------------------------------------------------- bad input
def test_bad_input_errors_name_the_argument():
    x = torch.randn(10, 4)
    y = torch.arange(10) % 3
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(x, y, ks=(1, 10))
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(x, y[:9])
    with pytest.raises(TypeError, match="labels"):
        retrieval_metrics(x, y.float())
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="emb"):
        retrieval_metrics(bad, y)
    with pytest.raises(ValueError, match="emb"):
        retrieval_metrics(x[:, :0], y)
    with pytest.raises(ValueError, match="emb"):
        retrieval_metrics(x[0], y)
    with pytest.raises(TypeError, match="emb"):
        retrieval_metrics([[0.0]], [0])
    with pytest.raises(ValueError, match="metric"):
        retrieval_metrics(x, y, metric="manhattan")
    with pytest.raises(ValueError, match="gallery"):
        retrieval_metrics(x, y, gallery=x)
    with pytest.raises(ValueError, match="gallery"):
        retrieval_metrics(x, y, gallery=torch.randn(5, 3), gallery_labels=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="gallery_labels"):
        retrieval_metrics(x, y, gallery=x, gallery_labels=y[:4])
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(x, y, ks=(0,))
    with pytest.raises(TypeError, match="ks"):
        retrieval_metrics(x, y, ks=())
    with pytest.raises(ValueError, match="k=5"):
        knn_search(x, 5, x[:4])
    with pytest.raises(ValueError, match="k=10"):
        knn_search(x, 10)
    with pytest.raises(ValueError, match="use_gpu") if not gpu_available() else pytest.raises(TypeError):
        knn_search(x, 2, use_gpu=True if not gpu_available() else "yes")


def test_chunks_bound_the_memory_for_large_n():
    # N = 100,000 with k = 60: each faiss call returns at most ~2**22 results, never N x N.
    from ssml_fast.evaluation.knn import default_chunk_size

    for k in (1, 9, 60, 1000, 99_999):
        rows = default_chunk_size(k)
        assert 1 <= rows <= 8192 and rows * k <= max(2**22, k)
