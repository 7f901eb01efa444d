"""Run pytorch-metric-learning's own upstream tests against ssml_fast, changing only imports.

    python tests/pml_upstream/run_upstream.py /path/to/pytorch-metric-learning [--mode class|all]
    SSML_PML_TESTS=/path/to/pytorch-metric-learning python tests/pml_upstream/run_upstream.py

The path is a checkout of PML (the directory holding `tests/`) or its `tests/` directory itself. Each
selected upstream test file is copied into a scratch copy of PML's `tests` package with the import of the
class(es) under test rewritten to ssml_fast; nothing else in the file changes. Then pytest runs each file
on the CPU in float32 and float64 (TEST_DEVICE=cpu, TEST_DTYPES=float32,float64) and the script prints a
pass / fail count per file (and writes it as JSON with --json).

mode "class" (default): only the classes under test come from ssml_fast; the distances, reducers,
  regularizers and helper classes a test also imports stay PML's (so our losses must accept PML's objects).
mode "all": every name that ssml_fast provides under the same module is taken from ssml_fast too (our
  distances / reducers / regularizers / miners inside the same tests).

Module-level imports (`from pytorch_metric_learning import losses`) become a namespace where the mirrored
classes are ssml_fast's and every other name is PML's (tests/pml_upstream/_namespace.py).
Needs pytorch-metric-learning installed (the tests import its utilities) and no network.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# Upstream file -> {PML module: names under test}. The names are the mirrored classes each file tests.
FILES = {
    "losses/test_triplet_margin_loss.py": {"losses": ["TripletMarginLoss"]},
    "losses/test_contrastive_loss.py": {"losses": ["ContrastiveLoss"]},
    "losses/test_npairs_loss.py": {"losses": ["NPairsLoss"]},
    "losses/test_lifted_structure_loss.py": {"losses": ["LiftedStructureLoss", "GeneralizedLiftedStructureLoss"]},
    "losses/test_multi_similarity_loss.py": {"losses": ["MultiSimilarityLoss"]},
    "losses/test_proxy_nca_loss.py": {"losses": ["ProxyNCALoss"]},
    "losses/test_proxy_anchor_loss.py": {"losses": ["ProxyAnchorLoss"]},
    "losses/test_ntxent_loss.py": {"losses": ["NTXentLoss", "SupConLoss"]},
    "losses/test_histogram_loss.py": {"losses": ["HistogramLoss"]},
    "losses/test_circle_loss.py": {"losses": ["CircleLoss"]},
    "losses/test_angular_loss.py": {"losses": ["AngularLoss"]},
    "losses/test_margin_loss.py": {"losses": ["MarginLoss"]},
    "losses/test_losses_without_labels.py": {"losses": ["*"]},
    "losses/test_self_supervised_loss.py": {"losses": ["*"]},
    "losses/test_arcface_loss.py": {"losses": ["ArcFaceLoss"]},
    "losses/test_subcenter_arcface_loss.py": {"losses": ["ArcFaceLoss", "SubCenterArcFaceLoss"]},
    "losses/test_cosface_loss.py": {"losses": ["CosFaceLoss"]},
    "losses/test_large_margin_softmax_loss.py": {"losses": ["LargeMarginSoftmaxLoss", "SphereFaceLoss"]},
    "losses/test_normalized_softmax_loss.py": {"losses": ["NormalizedSoftmaxLoss"]},
    "losses/test_soft_triple_loss.py": {"losses": ["SoftTripleLoss"]},
    "miners/test_batch_hard_miner.py": {"miners": ["BatchHardMiner"]},
    "miners/test_triplet_margin_miner.py": {"miners": ["TripletMarginMiner"]},
    "miners/test_multi_similarity_miner.py": {"miners": ["MultiSimilarityMiner"]},
    "miners/test_distance_weighted_miner.py": {"miners": ["DistanceWeightedMiner"]},
    "samplers/test_m_per_class_sampler.py": {"samplers": ["MPerClassSampler"]},
}
# Where a PML name lives in ssml_fast when not in the module of the same name.
_SSML_MODULE = {"losses": "ssml_fast.losses", "miners": "ssml_fast.miners", "distances": "ssml_fast.distances",
                "reducers": "ssml_fast.reducers", "regularizers": "ssml_fast.regularizers",
                "samplers": "ssml_fast.samplers"}
_PML = "pytorch_metric_learning"


def tests_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if (p / "tests" / "__init__.py").exists():
        p = p / "tests"
    if not (p / "__init__.py").exists() or not (p / "zzz_testing_utils").is_dir():
        raise SystemExit(f"{path}: not PML's tests directory (no tests/__init__.py and zzz_testing_utils/)")
    return p


def _ssml_has(module: str, name: str) -> bool:
    import importlib

    try:
        return hasattr(importlib.import_module(_SSML_MODULE[module]), name)
    except ImportError:
        return False


def rewrite(source: str, under_test: dict, mode: str = "class") -> str:
    """The test source with only the imports of the names under test pointed at ssml_fast."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits = []  # (first line, last line, replacement text)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != _PML:
                continue
            if len(parts) == 1:  # from pytorch_metric_learning import losses [, miners]
                keep, moved = [], []
                for a in node.names:
                    if a.name in under_test or (mode == "all" and a.name in _SSML_MODULE):
                        moved.append(a)
                    else:
                        keep.append(a)
                if not moved:
                    continue
                text = _import_line(_PML, keep)
                for a in moved:
                    text += f"from tests_pml_upstream_ns import {a.name} as {a.asname or a.name}\n"
                edits.append((node.lineno, node.end_lineno, text))
                continue
            if len(parts) != 2 or parts[1] not in _SSML_MODULE:
                continue
            mod = parts[1]
            wanted = under_test.get(mod, [])
            keep, moved = [], []
            for a in node.names:
                if a.name in wanted or ((mode == "all" or "*" in wanted) and _ssml_has(mod, a.name)):
                    moved.append(a)
                else:
                    keep.append(a)
            if moved:
                edits.append((node.lineno, node.end_lineno,
                              _import_line(node.module, keep) + _import_line(_SSML_MODULE[mod], moved)))
        elif isinstance(node, ast.Import):
            # import pytorch_metric_learning.losses as losses
            if len(node.names) == 1 and node.names[0].asname and node.names[0].name.startswith(_PML + "."):
                mod = node.names[0].name.split(".")[1]
                if under_test.get(mod) or (mode == "all" and mod in _SSML_MODULE):
                    edits.append((node.lineno, node.end_lineno,
                                  f"from tests_pml_upstream_ns import {mod} as {node.names[0].asname}\n"))
    for first, last, text in sorted(edits, reverse=True):
        lines[first - 1:last] = [text]
    return "".join(lines)


def _import_line(module: str, names) -> str:
    if not names:
        return ""
    return f"from {module} import " + ", ".join(a.name if not a.asname else f"{a.name} as {a.asname}"
                                               for a in names) + "\n"


def prepare(src_tests: Path, work: Path, files: list[str], mode: str) -> Path:
    """A scratch `tests` package: PML's helpers as they are, the selected files rewritten."""
    dst = work / "tests"
    shutil.copytree(src_tests, dst, ignore=shutil.ignore_patterns("test_*.py", "__pycache__"))
    for rel in files:
        (dst / rel).write_text(rewrite((src_tests / rel).read_text(), FILES[rel], mode))
    ns = (HERE / "_namespace.py").read_text().replace("__MODE__", mode)
    (work / "tests_pml_upstream_ns.py").write_text(ns)
    return dst


def run(src: str, files: list[str] | None = None, mode: str = "class", dtypes: str = "float32,float64",
        verbose: bool = False) -> dict:
    src_tests = tests_dir(src)
    files = files or list(FILES)
    results = {}
    with tempfile.TemporaryDirectory(prefix="pml_upstream_") as tmp:
        work = Path(tmp)
        prepare(src_tests, work, files, mode)
        env = dict(os.environ, TEST_DEVICE="cpu", TEST_DTYPES=dtypes, WITH_COLLECT_STATS="false",
                   PYTHONPATH=os.pathsep.join([str(work), str(REPO), os.environ.get("PYTHONPATH", "")]))
        xml = work / "results.xml"
        # One pytest process for all files (torch and PML import once); results are split per file below.
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", "--continue-on-collection-errors",
               "--rootdir", str(work), f"--junitxml={xml}"] + [str(work / "tests" / rel) for rel in files]
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if verbose:
            print(proc.stdout[-20000:], file=sys.stderr)
        for rel in files:
            results[rel] = _parse(xml, proc, rel, src_tests)
    return results


def _parse(xml: Path, proc, rel: str, src_tests: Path) -> dict:
    out = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    module = "tests." + rel[:-3].replace("/", ".")
    cases = [c for c in ET.parse(xml).iter("testcase")] if xml.exists() else []
    mine = [c for c in cases if c.get("classname", "") == module or c.get("classname", "").startswith(module + ".")]
    if not mine:
        # The file did not import: all its tests count as failed.
        n = sum(1 for node in ast.walk(ast.parse((src_tests / rel).read_text()))
                if isinstance(node, ast.FunctionDef) and node.name.startswith("test"))
        detail = [c for c in cases if c.get("name") == module.rsplit(".", 1)[-1] or module in c.get("classname", "")]
        msg = ""
        for c in detail:
            e = c.find("error")
            if e is not None:
                msg = (e.get("message") or "").strip()[:200]
        out["failed"] = n
        out["failures"].append(("<import>", msg or "collection failed"))
        return out
    for case in mine:
        name = case.get("classname", "").rsplit(".", 1)[-1] + "." + case.get("name", "")
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if case.find("skipped") is not None:
            out["skipped"] += 1
        elif bad is not None:
            out["failed"] += 1
            msg = (bad.get("message") or "").strip().splitlines()
            out["failures"].append((name, msg[0][:200] if msg else ""))
        else:
            out["passed"] += 1
    return out


def summary(results: dict) -> str:
    rows = [f"{'file':48s} passed / total"]
    tp = tt = 0
    for rel, r in results.items():
        total = r["passed"] + r["failed"]
        tp, tt = tp + r["passed"], tt + total
        rows.append(f"{rel:48s} {r['passed']:3d} / {total}")
        for name, msg in r["failures"]:
            rows.append(f"    FAIL {name}: {msg}")
    rows.append(f"{'TOTAL':48s} {tp:3d} / {tt}")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", nargs="?", default=os.environ.get("SSML_PML_TESTS"),
                    help="PML checkout or its tests/ directory (default: $SSML_PML_TESTS)")
    ap.add_argument("--mode", choices=("class", "all"), default="class")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--file", action="append", help="only this upstream file (repeatable), e.g. losses/test_ntxent_loss.py")
    ap.add_argument("--json", help="write the per-file results here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print pytest output of failing files")
    args = ap.parse_args(argv)
    if not args.path:
        ap.error("give the PML tests path or set SSML_PML_TESTS")
    results = run(args.path, args.file, args.mode, args.dtypes, args.verbose)
    print(summary(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["failed"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
