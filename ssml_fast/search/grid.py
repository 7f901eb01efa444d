"""A PNG grid of search results: one row per query, the query first, then its matches with their scores."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

THUMB = 160          # thumbnail side in pixels
MAX_ROWS = 16        # queries drawn (the printed list has them all)


def _thumbnail(path):
    """An RGB thumbnail array of `path`, or None when it cannot be read (drawn as an empty grey cell)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (THUMB, THUMB))
            img = img.convert("RGB")
            img.thumbnail((THUMB, THUMB))
            return np.asarray(img)
    except Exception:
        return None


def save_grid(results: Sequence, out: str | os.PathLike, *, metric: str = "cosine") -> Path:
    """Writes the grid of `results` (SearchResult list) to the PNG file `out` and returns its path.
    Queries given as vectors get an empty query cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = list(results)[:MAX_ROWS]
    if not results:
        raise ValueError("save_grid: no results to draw")
    cols = 1 + max(len(r.ids) for r in results)
    fig, axes = plt.subplots(len(results), cols, figsize=(1.7 * cols, 2.3 * len(results)), squeeze=False)
    label = "sim" if metric == "cosine" else "d²"
    for row, r in enumerate(results):
        cells = [(r.query, "query", Path(r.query).name if os.path.sep in r.query or "." in r.query else r.query)]
        for rank, (score, path) in enumerate(zip(r.scores, r.paths)):
            extra = f"\nrr {r.rerank_distances[rank]:.3f}" if r.rerank_distances is not None else ""
            cells.append((path, f"{rank + 1}: {label} {score:.3f}{extra}", Path(path).name))
        for col in range(cols):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(cells):
                ax.axis("off")
                continue
            path, title, name = cells[col]
            img = _thumbnail(path) if col or Path(str(path)).is_file() else None
            if img is None:
                ax.set_facecolor("0.85")
            else:
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            ax.set_title(title, fontsize=7, color="tab:blue" if col == 0 else "black")
            ax.set_xlabel(name[:22], fontsize=6)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
