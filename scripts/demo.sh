#!/usr/bin/env bash
# The main job: train an embedding on scikit-learn's bundled digits 0-4 with the fused triplet loss and
# report retrieval on the unseen digits 5-9 before and after. Sets up (or reuses) the venv and the
# compiled extension first. Extra arguments go to `ssml-fast train` (see `--help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$ROOT/scripts/setup.sh")"
cd "$ROOT"
exec "$PY" -m ssml_fast.cli train "$@"
