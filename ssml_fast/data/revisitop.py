"""rOxford5k / rParis6k (revisitop) in its official layout; queries cropped to their box.

    ROOT/roxford5k/gnd_roxford5k.pkl   (or ROOT/gnd_roxford5k.pkl)   {"imlist", "qimlist", "gnd"}
    ROOT/roxford5k/jpg/<name>.jpg      database images (imlist) and query images (qimlist)
    likewise rparis6k/gnd_rparis6k.pkl, rparis6k/jpg/

`gnd[i]` holds the query's box "bbx" (x1, y1, x2, y2) and the database indices "easy", "hard", "junk"
(`ssml_fast.evaluation.revisitop_map` builds the Easy / Medium / Hard protocols from them). The pickle is
read with `safe_pickle.restricted_load`, which admits only plain data. There are 70 queries per dataset;
databases of 4,993 (rOxford5k) and 6,322 (rParis6k) images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .files import DatasetError, ImageFiles, as_root, check_files_exist
from .safe_pickle import UnsafePickleError, restricted_load

REVISITOP = ("roxford5k", "rparis6k")
FULL_COUNTS = {"roxford5k": (70, 4993), "rparis6k": (70, 6322)}


@dataclass
class RevisitopSet:
    name: str
    database: ImageFiles          # labels are the database index
    queries: ImageFiles           # boxes: each query's bbx
    gnd: list                     # per query: {"bbx", "easy", "hard", "junk"} (lists of ints)


def gnd_path(root, name: str) -> Path:
    if name not in REVISITOP:
        raise ValueError(f"name must be one of {', '.join(REVISITOP)}, got {name!r}")
    root = as_root(root, name)
    for d in (root / name, root):
        if (d / f"gnd_{name}.pkl").is_file():
            return d / f"gnd_{name}.pkl"
    raise DatasetError(f"{name}: ground truth not found: expected {root / name / f'gnd_{name}.pkl'} beside "
                       f"{root / name / 'jpg'}/ (the revisitop layout)")


def _ints(v, where: str) -> list[int]:
    try:
        out = [int(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]
    except (TypeError, ValueError):
        raise DatasetError(f"{where} must be a list of image indices, got {type(v).__name__}") from None
    return out


def read_gnd(path: Path) -> dict:
    """The gnd dict, checked: imlist / qimlist lists of names, gnd one entry per query."""
    try:
        cfg = restricted_load(path)
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated / not a pickle
        raise DatasetError(f"{path} is not a readable revisitop ground-truth pickle ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("imlist", "qimlist", "gnd")):
        raise DatasetError(f"{path} must hold a dict with keys imlist, qimlist, gnd, got "
                           f"{sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__}")
    im, qim, gnd = cfg["imlist"], cfg["qimlist"], cfg["gnd"]
    for key, lst in (("imlist", im), ("qimlist", qim)):
        if not isinstance(lst, (list, tuple)) or not all(isinstance(s, str) for s in lst):
            raise DatasetError(f"{path}: {key} must be a list of image names")
    if not isinstance(gnd, (list, tuple)) or len(gnd) != len(qim):
        raise DatasetError(f"{path}: gnd must have one entry per query ({len(qim)}), got "
                           f"{len(gnd) if isinstance(gnd, (list, tuple)) else type(gnd).__name__}")
    out = []
    for q, g in enumerate(gnd):
        if not isinstance(g, dict) or "bbx" not in g:
            raise DatasetError(f"{path}: gnd[{q}] must be a dict with a 'bbx' box")
        bbx = [float(v) for v in (g["bbx"].tolist() if hasattr(g["bbx"], "tolist") else g["bbx"])]
        if len(bbx) != 4 or not all(math.isfinite(v) for v in bbx) or bbx[2] <= bbx[0] or bbx[3] <= bbx[1]:
            raise DatasetError(f"{path}: gnd[{q}]['bbx'] must be (x1, y1, x2, y2) with x2 > x1, y2 > y1, got {bbx}")
        entry = {"bbx": bbx}
        for key in ("easy", "hard", "junk"):
            entry[key] = _ints(g.get(key, []), f"{path}: gnd[{q}][{key!r}]")
            bad = [i for i in entry[key] if not 0 <= i < len(im)]
            if bad:
                raise DatasetError(f"{path}: gnd[{q}][{key!r}] indexes {bad[:3]} outside the {len(im)} database images")
        out.append(entry)
    return {"imlist": list(im), "qimlist": list(qim), "gnd": out}


def load_revisitop(root, name: str, *, max_size: int = 1024) -> RevisitopSet:
    """The database and the (cropped) queries of rOxford5k / rParis6k.

    Images are evaluated at their size capped to `max_size` on the long side (InsCLR / revisitop: 1024);
    a query's crop is scaled by the factor that brings its *full* image to that size.
    """
    path = gnd_path(root, name)
    cfg = read_gnd(path)
    jpg = path.parent / "jpg"
    db = [jpg / f"{n}.jpg" for n in cfg["imlist"]]
    qs = [jpg / f"{n}.jpg" for n in cfg["qimlist"]]
    check_files_exist(db + qs, path)
    database = ImageFiles(db, torch.arange(len(db)), image_size=max_size, eval_pipeline="revisitop")
    queries = ImageFiles(qs, torch.arange(len(qs)), image_size=max_size, eval_pipeline="revisitop",
                         boxes=[g["bbx"] for g in cfg["gnd"]])
    return RevisitopSet(name, database, queries, cfg["gnd"])
