"""The portable paths of the kernels with hand-written AVX2 code (the lower-triangle Gram, the cache's neighbour
scan, the contextual op's neighbour prefilter and its duplicate search, which hashes rows without that Gram), forced with SSML_FAST_DISABLE_AVX2=1 on machines that have AVX2: their own tests rerun in a
subprocess (the switch is read once per process)."""
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_portable_paths_pass_the_same_tests():
    env = {**os.environ, "SSML_FAST_DISABLE_AVX2": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly",
           str(TESTS / "test_symmetric_gram.py"),
           str(TESTS / "test_contextual.py"),
           str(TESTS / "test_contextual_cache.py") + "::test_scan_kernel_lists_follow_the_rule_and_fill_with_dead_slots",
           str(TESTS / "test_contextual_cache.py") + "::test_every_step_equals_the_fused_op"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=TESTS.parent)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
