"""The retrieval service: embed a folder of images with a trained checkpoint into a faiss index on disk,
append to it, and search it with images or vectors (optionally k-reciprocal re-ranked).

    from ssml_fast.search import Index, build_index
    index = build_index("runs/supervised-mnist5k/last.pt", "photos/", "photos.index")
    for r in index.search("query.jpg", k=10, rerank=True):
        print(r.query, list(zip(r.scores, r.paths)))
    index.add("more_photos/"); index.save()
    index = Index.load("photos.index")

Embeddings are L2-normalised and compared by inner product when the metric is "cosine" (the default of
every method but STML without normalisation, whose eval_metric is "euclidean": raw squared L2 then).
See faiss_index.py for the index kinds and their automatic parameters, store.py for the folder layout,
images.py for the evaluation transform.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import faiss_index, store
from .images import EvalTransform, is_image_file, list_images, transform_spec
from .reranking import RerankParams, rerank_shortlist
from .streaming import embed_paths


@dataclass
class SearchResult:
    """The k best matches of one query, best first."""

    query: str                      # the query's path, or "vector i" / "image i"
    ids: np.ndarray                 # (k,) int64 positions in the index
    paths: list                     # (k,) absolute Paths of the matched images
    scores: np.ndarray              # (k,) float32 cosine similarity (cosine) or squared L2 distance (euclidean)
    rerank_distances: Optional[np.ndarray] = None   # (k,) re-ranked distances when re-ranking was asked

    def rows(self) -> list[tuple[int, float, Path]]:
        return [(r + 1, float(s), p) for r, (s, p) in enumerate(zip(self.scores, self.paths))]


@dataclass
class AddReport:
    added: int = 0
    already_present: int = 0
    failed: list = field(default_factory=list)   # (path, reason) of unreadable images, skipped
    seconds: float = 0.0
    rebuilt: bool = False                        # the automatic index kind / nlist changed with the size


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _model_record(state: dict, checkpoint: Path, sha: str) -> dict:
    """What model.pt keeps of a training checkpoint: enough to rebuild the method (no optimiser)."""
    return {k: state[k] for k in ("method_name", "method_config", "run_config", "model_info", "method") if k in state} \
        | {"checkpoint": str(checkpoint), "checkpoint_sha256": sha}


def _load_model(folder: Path, device):
    from ..train.restore import restore_method

    state = torch.load(folder / store.MODEL, map_location="cpu", weights_only=True)
    method, info, _ = restore_method(state, folder / store.MODEL)
    return method.to(device).eval(), info


class Index:
    """An index folder loaded for searching and appending (see store.py for the files)."""

    def __init__(self, folder: Path, meta: dict, paths: list[str], faiss_obj, device="cpu"):
        self.folder = Path(folder)
        self.meta = meta
        self.paths = paths                  # stored form (relative to root when under it)
        self._faiss = faiss_obj
        self.plan = faiss_index.IndexPlan(**meta["plan"])
        self.device = torch.device(device)
        self._model = None
        self._vectors = store.open_vectors(self.folder, len(paths), meta["dim"])
        self._known = None

    # ---- loading / saving -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, *, device="cpu") -> "Index":
        """The index in folder `path`; ValueError naming the folder if it is missing, incomplete or
        inconsistent (e.g. an append interrupted between its file writes)."""
        import faiss

        folder = Path(path)
        meta = store.read_meta(folder)
        paths = store.read_paths(folder)
        index = faiss.read_index(str(folder / store.FAISS))
        if not (len(paths) == meta["count"] == index.ntotal):
            raise ValueError(f"index: {folder} is inconsistent ({len(paths)} paths, {meta['count']} in "
                             f"{store.META}, {index.ntotal} in {store.FAISS}); rebuild it")
        size = (folder / store.VECTORS).stat().st_size
        if size < meta["count"] * meta["dim"] * store.VECTOR_DTYPE.itemsize:
            raise ValueError(f"index: {folder / store.VECTORS} is shorter than {meta['count']} vectors; rebuild it")
        return cls(folder, meta, paths, index, device)

    def save(self) -> None:
        """Writes the faiss index and paths, then meta.json (the commit point)."""
        import faiss

        tmp = self.folder / (store.FAISS + ".tmp")
        faiss.write_index(self._faiss, str(tmp))
        os.replace(tmp, self.folder / store.FAISS)
        store.write_paths(self.folder, self.paths)
        self.meta.update(count=len(self.paths), plan=asdict(self.plan), updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        store.write_meta(self.folder, self.meta)

    # ---- properties -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    @property
    def root(self) -> Path:
        return Path(self.meta["root"])

    @property
    def metric(self) -> str:
        return self.plan.metric

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def full_path(self, i: int) -> Path:
        p = Path(self.paths[i])
        return p if p.is_absolute() else self.root / p

    def vectors(self, ids) -> np.ndarray:
        """(len(ids), dim) float32 stored vectors (float16 on disk)."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids)
        out = np.empty((len(ids), self.dim), np.float32)
        out[order] = self._vectors[ids[order]]   # sorted reads from the memory map
        return out

    def describe(self) -> str:
        m = self.meta["model"]
        return (f"{len(self)} images under {self.root}; {self.plan.describe()}; model {m['method_name']} "
                f"({m['checkpoint']}, sha256 {m['checkpoint_sha256'][:12]}), input {m['transform']}")

    # ---- embedding ----------------------------------------------------------------------------------
    def _method(self):
        if self._model is None:
            self._model = _load_model(self.folder, self.device)
        return self._model

    @property
    def transform(self) -> EvalTransform:
        return EvalTransform.of(self.meta["model"]["transform_spec"])

    def _embed_files(self, files: Sequence[Path], *, batch_size=64, num_workers=0, show_progress=None,
                     desc="embedding", writer=None):
        """Embeds `files`; returns (ok positions, vectors or None when streamed to `writer`, failed)."""
        method, _ = self._method()
        ok, chunks, failed = [], [], []
        for pos, emb, bad in embed_paths(method, files, self.transform, device=self.device,
                                         normalize=self.metric == "cosine", batch_size=batch_size,
                                         num_workers=num_workers, show_progress=show_progress, desc=desc):
            ok.extend(pos)
            failed.extend((files[i], reason) for i, reason in bad)
            if len(pos):
                writer.write(emb) if writer is not None else chunks.append(emb)
        vecs = None if writer is not None else (np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32))
        return ok, vecs, failed

    def _query_vectors(self, queries) -> tuple[np.ndarray, list[str]]:
        """Queries -> ((q, dim) float32, names). Accepts vectors (numpy / torch, (dim,) or (q, dim)), image
        paths or folders (str / Path, or a list of them), PIL images."""
        if isinstance(queries, (np.ndarray, torch.Tensor)):
            q = queries.detach().cpu().numpy() if torch.is_tensor(queries) else queries
            q = np.asarray(q, dtype=np.float32)
            q = q[None] if q.ndim == 1 else q
            if q.ndim != 2 or q.shape[1] != self.dim:
                raise ValueError(f"query: vectors must have shape (q, {self.dim}), got {tuple(queries.shape)}")
            if not np.isfinite(q).all():
                raise ValueError("query: vectors contain NaN or infinite values")
            if self.metric == "cosine":
                q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
            return np.ascontiguousarray(q), [f"vector {i}" for i in range(len(q))]
        items = [queries] if isinstance(queries, (str, os.PathLike)) or hasattr(queries, "getpixel") else list(queries)
        if not items:
            raise ValueError("query: no query given")
        from PIL import Image

        entries = []   # Paths (decoded in batches) and PIL images, in the order given
        for item in items:
            if isinstance(item, Image.Image):
                entries.append(item)
                continue
            p = Path(item)
            if p.is_dir():
                entries.extend(list_images(p, "query"))
            elif not p.is_file():
                raise ValueError(f"query: {p} does not exist")
            elif not is_image_file(p):
                raise ValueError(f"query: {p} is not an image file (.jpg, .jpeg, .png, .bmp, .webp)")
            else:
                entries.append(p.resolve())
        files = [e for e in entries if isinstance(e, Path)]
        by_file = {}
        if files:
            ok, vecs, failed = self._embed_files(files, show_progress=False, desc="queries")
            if failed:
                raise ValueError(f"query: {failed[0][0]} cannot be read ({failed[0][1]})")
            by_file = {str(files[i]): v for i, v in zip(ok, vecs)}
        method, _ = self._method()
        out, names = [], []
        for n, e in enumerate(entries):
            if isinstance(e, Path):
                out.append(by_file[str(e)])
                names.append(str(e))
                continue
            with torch.no_grad():
                emb = method.embed(self.transform(e)[None].to(self.device)).float()
                if self.metric == "cosine":
                    emb = torch.nn.functional.normalize(emb, dim=1)
            out.append(emb.cpu().numpy()[0])
            names.append(f"image {n}")
        return np.ascontiguousarray(np.stack(out), dtype=np.float32), names

    # ---- search ----------------------------------------------------------------------------------
    def search(self, queries, k: int = 10, *, rerank=False, nprobe: Optional[int] = None) -> list[SearchResult]:
        """The k best matches of each query (see _query_vectors for the accepted forms). rerank: True (defaults
        of RerankParams), a dict of its fields, or RerankParams: the best `candidates` are re-ordered by the
        k-reciprocal re-ranked distance and the first k returned. nprobe overrides the stored nprobe (ivf) or
        efSearch (hnsw) for this call."""
        k = _positive_int("k", k)
        params = RerankParams.of(rerank)
        if nprobe is not None:
            _positive_int("nprobe", nprobe)
        if len(self) == 0:
            raise ValueError("the index is empty")
        q, names = self._query_vectors(queries)
        k = min(k, len(self))
        depth = min(len(self), max(k, params.candidates) if params else k)
        if nprobe is not None and self.plan.kind != "flat":
            key = "nprobe" if self.plan.kind == "ivf" else "ef_search"
            faiss_index.apply_search_params(self._faiss, faiss_index.IndexPlan(**{**asdict(self.plan), key: nprobe}))
        try:
            with faiss_index.few_queries(len(q)):
                scores, ids = self._faiss.search(q, depth)
        finally:
            faiss_index.apply_search_params(self._faiss, self.plan)
        results = []
        for qi, name in enumerate(names):
            keep = ids[qi] >= 0
            row_ids, row_scores, rr = ids[qi][keep], scores[qi][keep], None
            if params and len(row_ids) > 1:
                dist = rerank_shortlist(q[qi], self.vectors(row_ids), params)
                order = np.argsort(dist, kind="stable")[:k]
                row_ids, row_scores, rr = row_ids[order], row_scores[order], dist[order]
            else:
                row_ids, row_scores = row_ids[:k], row_scores[:k]
            results.append(SearchResult(name, row_ids, [self.full_path(int(i)) for i in row_ids], row_scores, rr))
        return results

    # ---- append ----------------------------------------------------------------------------------
    def _known_paths(self) -> set:
        if self._known is None:
            self._known = {str(self.full_path(i).resolve()) for i in range(len(self))}
        return self._known

    def add(self, images, *, checkpoint=None, batch_size: int = 64, num_workers: int = 0,
            show_progress=None) -> AddReport:
        """Embeds the images of a folder (recursive) or a list of image files that are not in the index yet
        (by resolved path), writes their vectors to the folder's vector file and adds them to the faiss
        index. `checkpoint`, if given, must be the file the index was built from (by sha256). Call save() to
        commit (until then the folder on disk is unchanged: the extra vector rows are ignored)."""
        from ..train.restore import file_sha256

        t0 = time.perf_counter()
        if checkpoint is not None:
            ck = Path(checkpoint)
            if not ck.is_file():
                raise ValueError(f"checkpoint: {ck} does not exist")
            sha = file_sha256(ck)
            if sha != self.meta["model"]["checkpoint_sha256"]:
                raise ValueError(f"checkpoint: {ck} (sha256 {sha[:12]}) is not the checkpoint this index was built "
                                 f"with ({self.meta['model']['checkpoint']}, sha256 "
                                 f"{self.meta['model']['checkpoint_sha256'][:12]}); build a new index instead")
        files = images_of(images, "images")
        known = self._known_paths()
        new = [f for f in files if str(f) not in known]
        report = AddReport(already_present=len(files) - len(new))
        if not new:
            report.seconds = time.perf_counter() - t0
            return report
        start = len(self)
        writer = store.VectorWriter(self.folder, self.dim, start)
        try:
            ok, _, report.failed = self._embed_files(new, batch_size=batch_size, num_workers=num_workers,
                                                     show_progress=show_progress, writer=writer)
        finally:
            writer.close()
        self.paths.extend(store.stored_path(new[i], self.root) for i in ok)
        known.update(str(new[i]) for i in ok)
        report.added = len(ok)
        self._vectors = store.open_vectors(self.folder, len(self.paths), self.dim)
        replanned = faiss_index.plan_index(len(self), "auto", self.metric, flat_max=self.meta.get("flat_max", faiss_index.FLAT_MAX)) \
            if self.plan.auto else None
        if replanned is not None and (replanned.kind != self.plan.kind or
                                      (replanned.kind == "ivf" and not 0.5 <= replanned.nlist / self.plan.nlist <= 2)):
            self.plan = replanned
            self._faiss = faiss_index.build(self.plan, self._vectors)
            report.rebuilt = True
        else:
            faiss_index.add(self._faiss, self._vectors, start=start)
        if self.plan.kind != "flat" and not self.plan.search_fixed:
            self.plan.nprobe = self.plan.ef_search = 0
            self.plan = faiss_index.calibrate(self._faiss, self.plan, self._vectors)
        self.meta["skipped"] = [[store.stored_path(Path(p), self.root), r] for p, r in report.failed]
        report.seconds = time.perf_counter() - t0
        return report


def images_of(images, arg: str = "images") -> list[Path]:
    """A folder (searched recursively) or a list of image files -> sorted absolute paths."""
    if isinstance(images, (str, os.PathLike)):
        return list_images(images, arg)
    files = []
    for p in images:
        p = Path(p)
        if p.is_dir():
            files.extend(list_images(p, arg))
        elif not p.is_file():
            raise ValueError(f"{arg}: {p} does not exist")
        elif not is_image_file(p):
            raise ValueError(f"{arg}: {p} is not an image file")
        else:
            files.append(p.resolve())
    if not files:
        raise ValueError(f"{arg}: no images given")
    return sorted(set(files))


def build_index(checkpoint: str | os.PathLike, images, out: str | os.PathLike, *, index_type: str = "auto",
                nprobe: Optional[int] = None, nlist: Optional[int] = None, metric: Optional[str] = None, batch_size: int = 64,
                num_workers: int = 0, device="cpu", show_progress=None, overwrite: bool = False,
                flat_max: int = faiss_index.FLAT_MAX, report: Optional[AddReport] = None) -> Index:
    """Embeds every image of `images` (a folder, recursive, or a list of files) with the method of
    `checkpoint` and writes an index folder `out`. Everything is checked before the first image is decoded:
    the checkpoint, the images, index_type / nprobe / metric, and that `out` holds no index yet (unless
    `overwrite`). nlist (ivf cells) defaults to sqrt(N); nprobe (ivf) / efSearch (hnsw) to a calibrated value.
    Unreadable images are skipped (listed in `report.failed` and meta.json's "skipped")."""
    from ..train.restore import file_sha256, read_checkpoint, restore_method

    t0 = time.perf_counter()
    ck = Path(checkpoint).resolve() if Path(checkpoint).exists() else Path(checkpoint)
    try:
        state = read_checkpoint(ck)
    except ValueError as e:
        raise ValueError(f"checkpoint: {e}") from None
    if index_type not in ("auto",) + faiss_index.KINDS:
        raise ValueError(f"index_type must be auto, flat, ivf or hnsw, got {index_type!r}")
    if nprobe is not None:
        _positive_int("nprobe", nprobe)
    if nlist is not None:
        _positive_int("nlist", nlist)
    if metric is not None and metric not in faiss_index.METRICS:
        raise ValueError(f"metric must be cosine or euclidean, got {metric!r}")
    _positive_int("batch_size", batch_size)
    files = images_of(images, "images")
    out = Path(out)
    if (out / store.META).exists() and not overwrite:
        raise ValueError(f"out: {out} already holds an index (add images with --append / Index.add, or pass "
                         "--overwrite)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    method, info, _ = restore_method(state, ck)
    spec = transform_spec(state, info.image_shape)
    transform = EvalTransform.of(spec)
    metric = metric or method.eval_metric
    root = Path(images).resolve() if isinstance(images, (str, os.PathLike)) else Path(os.path.commonpath(files))
    if root.is_file():
        root = root.parent
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        (out / store.META).unlink(missing_ok=True)
    record = _model_record(state, ck, file_sha256(ck))
    torch.save(record, out / store.MODEL)
    meta = {"format": store.FORMAT, "root": str(root), "count": 0, "dim": 0, "flat_max": flat_max,
            "model": {"method_name": state["method_name"], "method_config": state["method_config"],
                      "model_info": asdict(info), "checkpoint": str(ck), "checkpoint_sha256": record["checkpoint_sha256"],
                      "epoch": (state.get("position") or {}).get("epoch"), "transform": transform.describe(),
                      "transform_spec": spec,
                      "metric": metric},
            "plan": {}, "skipped": [], "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    device = torch.device(device)
    method.to(device)
    writer = store.VectorWriter(out, None, 0)
    ok, failed = [], []
    try:
        for pos, emb, bad in embed_paths(method, files, transform, device=device, normalize=metric == "cosine",
                                         batch_size=batch_size, num_workers=num_workers,
                                         show_progress=show_progress):
            ok.extend(pos)
            failed.extend((files[i], reason) for i, reason in bad)
            writer.write(emb)
    finally:
        writer.close()
    if not ok:
        raise ValueError(f"images: none of the {len(files)} images under {root} could be read "
                         f"(first: {failed[0][0]}: {failed[0][1]})")
    dim = writer.dim
    paths = [store.stored_path(files[i], root) for i in ok]
    vectors = store.open_vectors(out, len(paths), dim)
    plan = faiss_index.plan_index(len(paths), index_type, metric, nlist=nlist, nprobe=nprobe, ef_search=nprobe,
                                  flat_max=flat_max)
    plan.search_fixed = nprobe is not None
    faiss_obj = faiss_index.build(plan, vectors)
    plan = faiss_index.calibrate(faiss_obj, plan, vectors)
    meta.update(dim=dim, count=len(paths), plan=asdict(plan),
                skipped=[[store.stored_path(Path(p), root), r] for p, r in failed])
    index = Index(out, meta, paths, faiss_obj, device)
    index._model = (method.eval(), info)
    index.save()
    if report is not None:
        report.added, report.failed, report.seconds = len(ok), failed, time.perf_counter() - t0
    return index
