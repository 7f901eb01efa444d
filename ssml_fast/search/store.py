"""The on-disk layout of an index folder.

    INDEX/meta.json      format, image root, count, dim, metric, the faiss plan, the model record
                         (method name + config, DataInfo, eval transform, checkpoint path + sha256),
                         the files skipped as unreadable; written last (temp file + rename): the commit point
    INDEX/paths.txt      one image path per line, in index order; relative to the root (POSIX separators)
                         when under it, absolute otherwise
    INDEX/vectors.f16    the embeddings, raw little-endian float16, row-major (count x dim): re-ranking reads
                         candidates' vectors here, and an automatic index is rebuilt from it when append
                         changes its plan. Appends write at the end; rows past `count` (an interrupted
                         append) are cut off first
    INDEX/index.faiss    the faiss index (faiss.write_index)
    INDEX/model.pt       the method's weights, config and DataInfo (weights_only-loadable), so search does
                         not depend on the training run's folder
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

FORMAT = 1
META, PATHS, VECTORS, FAISS, MODEL = "meta.json", "paths.txt", "vectors.f16", "index.faiss", "model.pt"
VECTOR_DTYPE = np.dtype("<f2")


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_meta(folder: Path, meta: dict) -> None:
    _atomic_write(folder / META, lambda f: f.write(json.dumps(meta, indent=1).encode()))


def read_meta(folder: Path, arg: str = "index") -> dict:
    folder = Path(folder)
    if not folder.exists():
        raise ValueError(f"{arg}: {folder} does not exist (build one with `ssml-fast index`)")
    if not (folder / META).is_file():
        raise ValueError(f"{arg}: {folder} is not an index folder (no {META}; build one with `ssml-fast index`)")
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{arg}: {folder / META} is not readable JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{arg}: {folder / META} is not an ssml-fast index of format {FORMAT}")
    for name in (PATHS, VECTORS, FAISS, MODEL):
        if not (folder / name).is_file():
            raise ValueError(f"{arg}: {folder / name} is missing (the index folder is incomplete; rebuild it)")
    return meta


def write_paths(folder: Path, paths: list[str]) -> None:
    for p in paths:
        if "\n" in p or "\r" in p:
            raise ValueError(f"image path {p!r} contains a line break; rename the file")
    _atomic_write(folder / PATHS, lambda f: f.write("".join(p + "\n" for p in paths).encode("utf-8")))


def read_paths(folder: Path) -> list[str]:
    text = (folder / PATHS).read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text else []


def stored_path(path: Path, root: Path) -> str:
    """How `path` (absolute) is recorded: relative to `root` when under it, absolute otherwise."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


class VectorWriter:
    """Appends float16 rows to INDEX/vectors.f16 after cutting it to `count` existing rows."""

    def __init__(self, folder: Path, dim: int | None, count: int):
        self.path = Path(folder) / VECTORS
        self.dim, self.count = dim, count
        mode = "r+b" if self.path.exists() else "wb"
        self.file = open(self.path, mode)
        self.file.truncate(count * (dim or 0) * VECTOR_DTYPE.itemsize)
        self.file.seek(0, os.SEEK_END)

    def write(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        if self.dim is None:
            self.dim = rows.shape[1]
        if rows.shape[1] != self.dim:
            raise ValueError(f"embedding dimension {rows.shape[1]} does not match the index's {self.dim}")
        self.file.write(np.ascontiguousarray(rows, dtype=VECTOR_DTYPE).tobytes())
        self.count += len(rows)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def open_vectors(folder: Path, count: int, dim: int) -> np.ndarray:
    """The (count, dim) float16 vectors, memory-mapped read-only (empty array for count 0)."""
    if count == 0:
        return np.zeros((0, dim), VECTOR_DTYPE)
    return np.memmap(Path(folder) / VECTORS, dtype=VECTOR_DTYPE, mode="r", shape=(count, dim))
