#!/usr/bin/env bash
# The main job: `ssml-fast compare` on the bundled MNIST-5k (train digits 0-4, test the unseen 5-9): every
# registered method plus the raw-pixel and untrained-network baselines, one table and three PNGs in
# runs/compare/. Sets up (or reuses) the venv and the compiled extension first. Extra arguments go to
# `ssml-fast compare` (see `--help`), e.g. --seeds 0,1,2 or --train-classes 5,6,7,8,9.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$ROOT/scripts/setup.sh")"
cd "$ROOT"
exec "$PY" -m ssml_fast.cli compare "$@"
