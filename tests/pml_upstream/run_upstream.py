"""Run pytorch-metric-learning's own upstream tests against ssml_fast, changing only imports.

    python tests/pml_upstream/run_upstream.py /path/to/pytorch-metric-learning [--mode class|all] [--pml-src [DIR]]
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

Which PML the tests import (their utilities, PML's own losses / miners / distances): by default the installed
one (the tests' own `sys.path.insert(0, "src")` is relative to the scratch directory, so it finds nothing).
`--pml-src` (or SSML_PML_SRC=DIR) puts a PML source tree first on the pytest process's PYTHONPATH instead:
`--pml-src` alone means `<checkout>/src`, the sources the test files were written against (their version
may differ from the installed one). The first line printed names the PML version and file imported.

A test that fails with our class is rerun with PML's own class (the file as upstream wrote it, same
environment). If PML's own class fails it too, the failure is the test's against this PML version (e.g.
the 2.8.1 tests under PML 2.9): it is listed as "also fails with PML's own class", not counted as failed.
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
    # about 2 min (PML's 30-step loops with float32 / float64 over 14 inner losses)
    "losses/test_cross_batch_memory.py": {"losses": ["CrossBatchMemory"]},
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


def prepare(src_tests: Path, work: Path, files: list[str], mode: str, rewritten: bool = True) -> Path:
    """A scratch `tests` package: PML's helpers as they are, the selected files rewritten (or, rewritten=False,
    as upstream wrote them: PML's own classes)."""
    dst = work / "tests"
    shutil.copytree(src_tests, dst, ignore=shutil.ignore_patterns("test_*.py", "__pycache__"))
    for rel in files:
        text = (src_tests / rel).read_text()
        (dst / rel).write_text(rewrite(text, FILES[rel], mode) if rewritten else text)
    ns = (HERE / "_namespace.py").read_text().replace("__MODE__", mode)
    (work / "tests_pml_upstream_ns.py").write_text(ns)
    return dst


def pml_src_dir(src: str, pml_src: str | None) -> Path | None:
    """The PML source tree to import instead of the installed PML: None (installed), "" (<checkout>/src)
    or a directory holding pytorch_metric_learning/."""
    if pml_src is None:
        return None
    p = Path(pml_src) if pml_src else Path(src) / "src"
    if (p / "src" / "pytorch_metric_learning").is_dir():
        p = p / "src"
    if not (p / "pytorch_metric_learning" / "__init__.py").exists():
        raise SystemExit(f"{p}: no pytorch_metric_learning/ package there (--pml-src wants PML's src/ directory)")
    return p.resolve()


def _env(work: Path | None, dtypes: str, pml_src: Path | None) -> dict:
    path = ([str(work)] if work else []) + ([str(pml_src)] if pml_src else []) + [str(REPO),
                                                                                  os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, TEST_DEVICE="cpu", TEST_DTYPES=dtypes, WITH_COLLECT_STATS="false",
                PYTHONPATH=os.pathsep.join(path))


def pml_imported(src: str | None = None, pml_src: str | None = None) -> str:
    """'<version> (<file>)' of the PML the upstream tests import with these options."""
    env = _env(None, "float32", pml_src_dir(src or ".", pml_src))
    code = "import pytorch_metric_learning as p; print(p.__version__, '(' + p.__file__ + ')')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return proc.stdout.strip() or f"not importable: {proc.stderr.strip()[-200:]}"


def _pytest(work: Path, env: dict, targets: list[str], verbose: bool):
    xml = work / "results.xml"
    # One pytest process for all files (torch and PML import once); results are split per file afterwards.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", "--continue-on-collection-errors",
           "--rootdir", str(work), f"--junitxml={xml}"] + targets
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if verbose:
        print(proc.stdout[-20000:], file=sys.stderr)
    return xml, proc


def run(src: str, files: list[str] | None = None, mode: str = "class", dtypes: str = "float32,float64",
        verbose: bool = False, pml_src: str | None = None) -> dict:
    """{file: {"passed", "failed", "skipped", "failures": [(test, message)], "pml_own_fails": [(test, message)]}}
    pml_src: None = the installed PML; "" = <src>/src; else a PML source directory (module docstring)."""
    src_tests = tests_dir(src)
    source_tree = pml_src_dir(src, pml_src)
    files = files or list(FILES)
    results = {}
    with tempfile.TemporaryDirectory(prefix="pml_upstream_") as tmp:
        work = Path(tmp) / "ours"
        work.mkdir()
        prepare(src_tests, work, files, mode)
        env = _env(work, dtypes, source_tree)
        xml, proc = _pytest(work, env, [str(work / "tests" / rel) for rel in files], verbose)
        for rel in files:
            results[rel] = _parse(xml, proc, rel, src_tests)
        _rerun_with_pml_own(src_tests, Path(tmp) / "pml_own", results, dtypes, source_tree, verbose)
    return results


def _rerun_with_pml_own(src_tests: Path, work: Path, results: dict, dtypes: str, source_tree, verbose: bool):
    """Rerun each failing test with PML's own class; a failure PML's class shares moves to pml_own_fails."""
    failing = {rel: [name for name, _ in r["failures"] if name != "<import>"] for rel, r in results.items()}
    failing = {rel: names for rel, names in failing.items() if names}
    if not failing:
        return
    work.mkdir()
    prepare(src_tests, work, list(failing), "class", rewritten=False)
    nodes = [f"{work / 'tests' / rel}::{name.replace('.', '::')}" for rel, names in failing.items() for name in names]
    xml, proc = _pytest(work, _env(work, dtypes, source_tree), nodes, verbose)
    for rel, names in failing.items():
        theirs = dict(_parse(xml, proc, rel, src_tests)["failures"])
        r = results[rel]
        shared = [(n, m) for n, m in r["failures"] if n in theirs and n != "<import>"]
        r["failures"] = [(n, m) for n, m in r["failures"] if (n, m) not in shared]
        r["pml_own_fails"] = shared
        r["failed"] -= len(shared)


def _parse(xml: Path, proc, rel: str, src_tests: Path) -> dict:
    out = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "pml_own_fails": []}
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
    tp = tt = to = 0
    for rel, r in results.items():
        own = r.get("pml_own_fails", [])
        total = r["passed"] + r["failed"] + len(own)
        tp, tt, to = tp + r["passed"], tt + total, to + len(own)
        rows.append(f"{rel:48s} {r['passed']:3d} / {total}" + (f"  ({len(own)} also fail with PML's own class)"
                                                                  if own else ""))
        for name, msg in r["failures"]:
            rows.append(f"    FAIL {name}: {msg}")
        for name, msg in own:
            rows.append(f"    FAIL (PML's own class too) {name}: {msg}")
    rows.append(f"{'TOTAL':48s} {tp:3d} / {tt}" + (f"  ({to} also fail with PML's own class)" if to else ""))
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", nargs="?", default=os.environ.get("SSML_PML_TESTS"),
                    help="PML checkout or its tests/ directory (default: $SSML_PML_TESTS)")
    ap.add_argument("--mode", choices=("class", "all"), default="class")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--file", action="append", help="only this upstream file (repeatable), e.g. losses/test_ntxent_loss.py")
    ap.add_argument("--json", help="write the per-file results here")
    ap.add_argument("--pml-src", nargs="?", const="", default=os.environ.get("SSML_PML_SRC"), metavar="DIR",
                    help="import PML from this source tree (alone: <checkout>/src) instead of the installed PML "
                         "(default: $SSML_PML_SRC, else the installed one)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print pytest output of failing files")
    args = ap.parse_args(argv)
    if not args.path:
        ap.error("give the PML tests path or set SSML_PML_TESTS")
    print(f"PML imported by the tests: {pml_imported(args.path, args.pml_src)}")
    results = run(args.path, args.file, args.mode, args.dtypes, args.verbose, args.pml_src)
    print(summary(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["failed"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
