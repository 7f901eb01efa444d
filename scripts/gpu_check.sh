#!/usr/bin/env bash
# The one command to run on a machine with a CUDA GPU (never in CI):
#
#     bash scripts/gpu_check.sh OUTDIR
#
# 1. builds the extension if needed (scripts/setup.sh: the pinned CUDA torch, the CUDA kernels for the
#    architectures of CMakeLists.txt; set TORCH_CUDA_ARCH_LIST="8.0" or the like to build for one GPU only,
#    which is much faster) and checks that the build has CUDA and torch sees a GPU;
# 2. runs every CUDA test: the tests that need a GPU, every device-parametrised test on "cuda", the CPU-vs-CUDA
#    parity tests, and the CPU twins of the GPU algorithms (test_*_gpu_algorithm.py);
# 3. runs the GPU-size benches (scripts/gpu_bench.py: triplet B = 4096-16384, contextual n = 240-4096,
#    re-ranking N = 10k-100k, memory banks);
# 4. writes OUTDIR/summary.md (environment, test counts, the bench table) and prints it; the logs are
#    OUTDIR/setup.log, OUTDIR/tests.log (+ tests.xml), OUTDIR/bench.log (+ bench.md, bench.json).
# Exit status 0 when the build, every test and every bench case succeeded. Aims at under 8 minutes once
# built (the tests about 3, the benches about 4); SSML_GPU_CHECK_QUICK=1 runs the benches at small sizes.
# SSML_GPU_CHECK_DRY_RUN=1 runs the whole pipeline without a GPU (CUDA tests skip, benches on the CPU at small
# sizes), to check the script itself.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:?usage: bash scripts/gpu_check.sh OUTDIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
status=0
t0=$(date +%s)

echo "[gpu_check] building / checking the environment (log: $OUT/setup.log)"
if ! PY="$(bash scripts/setup.sh 2> "$OUT/setup.log")"; then
  tail -n 30 "$OUT/setup.log"
  echo "[gpu_check] setup failed; see $OUT/setup.log"
  exit 1
fi
if ! "$PY" - > "$OUT/env.txt" 2>&1 <<'EOF'
import os, sys, torch, ssml_fast
info = ssml_fast.build_info()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); ssml_fast {info['version']}")
print(f"compiled CUDA kernels: {info['cuda']} (archs: {info['cuda_archs'] or 'none'}); threads: {info['num_threads']}")
dry = os.environ.get("SSML_GPU_CHECK_DRY_RUN") == "1"
if not torch.cuda.is_available():
    print("torch sees no CUDA device" + (" (dry run: going on)" if dry else "")); sys.exit(0 if dry else 1)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GB")
if not info["cuda"]:
    print("the extension was built without CUDA (no nvcc, or SSML_FAST_CUDA=OFF)"); sys.exit(1)
EOF
then
  cat "$OUT/env.txt"
  echo "[gpu_check] no usable GPU build; nothing else to run"
  exit 1
fi
cat "$OUT/env.txt"

# Every test file that has CUDA tests (requires_cuda / the device fixture), and the CPU twins of the GPU code.
mapfile -t files < <(grep -lE "requires_cuda|\(device[,)]|, device[,)]|_gpu_algorithm" tests/test_*.py | LC_ALL=C sort)
echo "[gpu_check] CUDA tests in ${#files[@]} files (log: $OUT/tests.log)"
"$PY" -m pytest -q -p no:cacheprovider -rfEs "${files[@]}" -k "cuda or gpu" --junitxml="$OUT/tests.xml" \
  > "$OUT/tests.log" 2>&1 || status=1
tail -n 3 "$OUT/tests.log"

echo "[gpu_check] GPU benches (log: $OUT/bench.log)"
bench_args=()
[ "${SSML_GPU_CHECK_QUICK:-0}" = "1" ] && bench_args=(--quick)
[ "${SSML_GPU_CHECK_DRY_RUN:-0}" = "1" ] && bench_args=(--quick --device cpu --rounds 2 --budget 5)
"$PY" scripts/gpu_bench.py --out "$OUT" "${bench_args[@]}" > "$OUT/bench.log" 2>&1 || status=1

"$PY" - "$OUT" "$status" "$(( $(date +%s) - t0 ))" <<'EOF' > "$OUT/summary.md"
import sys, xml.etree.ElementTree as ET
from pathlib import Path
out, status, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print(f"# ssml_fast GPU check ({'OK' if status == 0 else 'FAILURES'}, {seconds // 60} min {seconds % 60} s)\n")
print("```\n" + (out / "env.txt").read_text().strip() + "\n```\n")
try:
    suites = ET.parse(out / "tests.xml").getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    print(f"Tests: {passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped "
          f"(tests.log)\n")
    for s in suites:
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                print(f"- FAILED {case.get('classname')}::{case.get('name')}")
    print()
except (OSError, ET.ParseError) as e:
    print(f"Tests: no result ({e}); see tests.log\n")
bench = out / "bench.md"
print(bench.read_text() if bench.exists() else "Benches: no result; see bench.log")
EOF
cat "$OUT/summary.md"
exit $status
