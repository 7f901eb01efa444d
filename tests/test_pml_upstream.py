"""PML's own upstream tests against ssml_fast (tests/pml_upstream/run_upstream.py), only the imports of the
classes under test changed. Needs a copy of PML's tests: set SSML_PML_TESTS to a PML checkout (or its
tests/ directory); skipped otherwise, so the suite never needs the network."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "pml_upstream"))
import run_upstream  # noqa: E402

SRC = os.environ.get("SSML_PML_TESTS")
needs_upstream = pytest.mark.skipif(not SRC, reason="SSML_PML_TESTS does not point at PML's upstream tests")


def test_rewrite_changes_only_the_imports_under_test():
    src = ("from pytorch_metric_learning.distances import CosineSimilarity\n"
           "from pytorch_metric_learning.losses import NTXentLoss, SupConLoss\n"
           "x = NTXentLoss()\n")
    out = run_upstream.rewrite(src, {"losses": ["NTXentLoss"]})
    assert out.splitlines() == ["from pytorch_metric_learning.distances import CosineSimilarity",
                                "from pytorch_metric_learning.losses import SupConLoss",
                                "from ssml_fast.losses import NTXentLoss", "x = NTXentLoss()"]


@needs_upstream
@pytest.mark.parametrize("mode", ["class", "all"])
def test_upstream_files_pass(mode):
    pytest.importorskip("pytorch_metric_learning")
    results = run_upstream.run(SRC, mode=mode)
    failed = {f: r["failures"] for f, r in results.items() if r["failed"]}
    assert not failed, run_upstream.summary(results)
    assert sum(r["passed"] for r in results.values()) >= 40
