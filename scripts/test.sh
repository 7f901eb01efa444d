#!/usr/bin/env bash
# Runs the test suite, setting up (or reusing) the virtual env and the compiled extension first.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k triplet`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$ROOT/scripts/setup.sh")"
cd "$ROOT"
exec "$PY" -m pytest -q "$@"
