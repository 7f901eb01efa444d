"""The faiss side of the retrieval service: which index, built how, searched with which parameters.

Kinds (IndexPlan.kind):
  flat  exact search (IndexFlatIP / IndexFlatL2). Chosen automatically below FLAT_MAX vectors.
  ivf   IndexIVFFlat: nlist k-means cells (spherical k-means for cosine), nprobe cells searched per query.
        Chosen automatically from FLAT_MAX vectors on.
  hnsw  IndexHNSWFlat (M links per node); only on request (its build is far slower than IVF's on 2 cores,
        bench/results_search.md).
Vectors are L2-normalised and compared by inner product for metric "cosine", raw by squared L2 for
"euclidean".

The automatic parameters come from bench/results_search.md (1,000,000 clustered 128-d vectors on the 2-core
CI machine): nlist = NLIST_FACTOR * sqrt(N), k-means on TRAIN_PER_CELL points per cell for KMEANS_ITERS
iterations; nprobe (ivf) or efSearch (hnsw) is then *calibrated*: the smallest power of two whose recall@10
against exact search, measured on CALIBRATION_QUERIES vectors of the index itself (each excluded from its
own list), reaches `target_recall` (CALIBRATION_TARGET, a margin over the 0.95 goal for the sampling error).
The measured recall is kept in the plan.

Vectors are read from any (N, D) array (a numpy memmap of the index's float16 vector file, in particular)
CHUNK rows at a time, so building never needs them all as float32 at once (the IVF/flat index itself holds
N x D float32: that is the index).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

KINDS = ("flat", "ivf", "hnsw")
METRICS = ("cosine", "euclidean")
FLAT_MAX = 50_000            # auto: exact search below this many vectors
NLIST_FACTOR = 1.0           # nlist = NLIST_FACTOR * sqrt(N)
TRAIN_PER_CELL = 64          # k-means training points per cell (faiss warns below 39)
KMEANS_ITERS = 10
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
CALIBRATION_QUERIES = 200
CALIBRATION_TARGET = 0.97
CHUNK = 65536
TRAIN_SAMPLE_BYTES = 256 << 20   # k-means sample cap (float32 bytes)
FEW_QUERIES = 16                 # searches of fewer queries run on one thread (few_queries)


@dataclass
class IndexPlan:
    kind: str = "flat"
    metric: str = "cosine"
    nlist: int = 0
    nprobe: int = 0
    hnsw_m: int = 0
    ef_construction: int = 0
    ef_search: int = 0
    calibrated_recall: Optional[float] = None  # recall@10 of the search parameters on the index's own vectors
    auto: bool = True                          # kind chosen automatically (re-planned on append)
    search_fixed: bool = False                 # nprobe / efSearch given by the user (not re-calibrated)

    def describe(self) -> str:
        if self.kind == "flat":
            return f"flat (exact), {self.metric}"
        rec = f", calibrated recall@10 {self.calibrated_recall:.3f}" if self.calibrated_recall is not None else ""
        if self.kind == "ivf":
            return f"ivf, nlist {self.nlist}, nprobe {self.nprobe}, {self.metric}{rec}"
        return f"hnsw, M {self.hnsw_m}, efSearch {self.ef_search}, {self.metric}{rec}"


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("the retrieval service needs faiss: pip install faiss-cpu") from e
    return faiss


def _metric(metric: str):
    faiss = _faiss()
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def default_nlist(n: int) -> int:
    """NLIST_FACTOR * sqrt(n) cells, at most n // 39 (faiss's minimum of points per cell), at least 1."""
    return max(1, min(int(round(NLIST_FACTOR * math.sqrt(n))), n // 39))


def plan_index(n: int, kind: str = "auto", metric: str = "cosine", *, nlist: Optional[int] = None,
               nprobe: Optional[int] = None, ef_search: Optional[int] = None, flat_max: int = FLAT_MAX) -> IndexPlan:
    """The index for n vectors. kind "auto" -> flat below flat_max, ivf from it on. nprobe / ef_search left
    None are calibrated after the build (calibrate())."""
    if kind not in ("auto",) + KINDS:
        raise ValueError(f"index type must be auto, flat, ivf or hnsw, got {kind!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be cosine or euclidean, got {metric!r}")
    for name, v in (("nlist", nlist), ("nprobe", nprobe), ("ef_search", ef_search)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    auto = kind == "auto"
    if auto:
        kind = "flat" if n < flat_max else "ivf"
    if kind == "flat":
        return IndexPlan("flat", metric, auto=auto)
    if kind == "ivf":
        if n < 39:
            raise ValueError(f"an ivf index needs at least 39 vectors to train on, got {n}")
        nl = nlist or default_nlist(n)
        if nl > n:
            raise ValueError(f"nlist {nl} is larger than the number of vectors {n}")
        return IndexPlan("ivf", metric, nlist=nl, nprobe=min(nprobe, nl) if nprobe else 0, auto=auto)
    return IndexPlan("hnsw", metric, hnsw_m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION,
                     ef_search=ef_search or 0, auto=auto)


def _rows(vectors, start: int, stop: int) -> np.ndarray:
    return np.ascontiguousarray(vectors[start:stop], dtype=np.float32)


def _train_sample(vectors, count: int, seed: int) -> np.ndarray:
    n = len(vectors)
    if count >= n:
        return _rows(vectors, 0, n)
    pick = np.sort(np.random.default_rng(seed).choice(n, count, replace=False))
    return np.ascontiguousarray(vectors[pick], dtype=np.float32)


def new_index(plan: IndexPlan, dim: int):
    """An empty (untrained) faiss index for `plan`."""
    faiss = _faiss()
    metric = _metric(plan.metric)
    if plan.kind == "flat":
        return faiss.IndexFlatIP(dim) if plan.metric == "cosine" else faiss.IndexFlatL2(dim)
    if plan.kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim) if plan.metric == "cosine" else faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, plan.nlist, metric)
        index.cp.niter = KMEANS_ITERS
        index.cp.spherical = plan.metric == "cosine"
        index.cp.max_points_per_centroid = TRAIN_PER_CELL
        index.cp.seed = 1234
        return index
    index = faiss.IndexHNSWFlat(dim, plan.hnsw_m, metric)
    index.hnsw.efConstruction = plan.ef_construction
    return index


def build(plan: IndexPlan, vectors, *, seed: int = 0, chunk: int = CHUNK):
    """A trained faiss index holding every row of `vectors` ((N, D), any float dtype, e.g. a memmap)."""
    n, dim = vectors.shape
    index = new_index(plan, dim)
    if plan.kind == "ivf":
        count = min(n, plan.nlist * TRAIN_PER_CELL, max(39 * plan.nlist, TRAIN_SAMPLE_BYTES // (4 * dim)))
        index.train(_train_sample(vectors, count, seed))
    add(index, vectors, chunk=chunk)
    apply_search_params(index, plan)
    return index


def add(index, vectors, start: int = 0, chunk: int = CHUNK) -> None:
    """Adds rows start.. of `vectors` to `index`, `chunk` rows at a time."""
    for s in range(start, len(vectors), chunk):
        index.add(_rows(vectors, s, min(s + chunk, len(vectors))))


def apply_search_params(index, plan: IndexPlan) -> None:
    faiss = _faiss()
    if plan.kind == "ivf" and plan.nprobe:
        faiss.extract_index_ivf(index).nprobe = plan.nprobe
    elif plan.kind == "hnsw" and plan.ef_search:
        index.hnsw.efSearch = plan.ef_search


@contextlib.contextmanager
def few_queries(nq: int, below: int = FEW_QUERIES):
    """One OpenMP thread for searches of fewer than `below` queries: faiss's parallel regions cost more than
    they give for a single query, and on a loaded machine two spinning threads make a 50k-vector flat search
    5x slower (bench/results_search.md). omp_set_num_threads applies to the calling thread only."""
    if nq >= below:
        yield
        return
    faiss = _faiss()
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def exact_search(queries: np.ndarray, vectors, k: int, metric: str, chunk: int = CHUNK):
    """Exact (scores, ids) of the k best rows of `vectors` for each query, `chunk` rows at a time:
    largest inner products ("cosine") or smallest squared L2 distances ("euclidean")."""
    faiss = _faiss()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    keep_max = metric == "cosine"
    heap = faiss.ResultHeap(len(queries), k, keep_max=keep_max)
    for s in range(0, len(vectors), chunk):
        block = _rows(vectors, s, min(s + chunk, len(vectors)))
        kk = min(k, len(block))
        d, i = faiss.knn(queries, block, kk, metric=_metric(metric))
        if kk < k:
            pad = np.full((len(queries), k - kk), -np.inf if keep_max else np.inf, np.float32)
            d, i = np.hstack([d, pad]), np.hstack([i, np.full(pad.shape, -1, np.int64)])
        heap.add_result(np.ascontiguousarray(d, np.float32), np.ascontiguousarray(np.where(i >= 0, i + s, -1)))
    heap.finalize()
    return heap.D, heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |found_i ∩ truth_i| / k (ids < 0 ignored)."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / k for f, t in zip(found, truth)]))


def _drop_self(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row's ids without the query's own id (the first k remaining)."""
    out = np.full((len(ids), k), -1, np.int64)
    for r, (row, me) in enumerate(zip(ids, own)):
        rest = row[row != me][:k]
        out[r, :len(rest)] = rest
    return out


def calibrate(index, plan: IndexPlan, vectors, *, k: int = 10, target_recall: float = CALIBRATION_TARGET,
              queries: int = CALIBRATION_QUERIES, seed: int = 0) -> IndexPlan:
    """Chooses the smallest power-of-two nprobe (ivf) / efSearch (hnsw) whose recall@k on `queries` of the
    index's own vectors (each excluded from its result) reaches target_recall; the recall is recorded.
    Parameters already set in the plan are kept and only measured. Flat plans are returned unchanged."""
    if plan.kind == "flat":
        return plan
    n = len(vectors)
    k = min(k, n - 1)
    if k < 1:
        return plan
    pick = np.sort(np.random.default_rng(seed + 1).choice(n, min(queries, n), replace=False))
    q = np.ascontiguousarray(vectors[pick], dtype=np.float32)
    _, truth = exact_search(q, vectors, k + 1, plan.metric)
    truth = _drop_self(truth, pick, k)
    fixed = plan.nprobe if plan.kind == "ivf" else plan.ef_search
    if plan.kind == "ivf":
        candidates = [fixed] if fixed else [p for p in (2 ** e for e in range(20)) if p < plan.nlist] + [plan.nlist]
    else:
        candidates = [fixed] if fixed else [max(e, k + 1) for e in (16, 32, 64, 128, 256, 512, 1024)]
    recall = 0.0
    for value in candidates:
        trial = IndexPlan(**{**asdict(plan), ("nprobe" if plan.kind == "ivf" else "ef_search"): value})
        apply_search_params(index, trial)
        _, found = index.search(q, k + 1)
        recall = recall_at_k(_drop_self(found, pick, k), truth)
        if recall >= target_recall:
            break
    trial.calibrated_recall = round(recall, 4)
    apply_search_params(index, trial)
    return trial
