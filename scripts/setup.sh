#!/usr/bin/env bash
# Makes the development environment ready and prints the python to use, reusing what is already there:
#   - a virtual env ($SSML_FAST_VENV, default .venv/ in the repo),
#   - torch (pinned: the CUDA 13.0 build lets the CUDA kernels compile; they run only on a GPU),
#   - the runtime and test dependencies,
#   - the compiled extension, rebuilt (incrementally) when csrc/, CMakeLists.txt or pyproject.toml change.
# Safe to run concurrently: a lock serialises installs and builds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SSML_FAST_VENV:-$ROOT/.venv}"
TORCH_SPEC="${SSML_FAST_TORCH:-torch==2.14.1 torchvision==0.29.1}"
BASE_PY="${PYTHON:-python3}"

log() { echo "[setup] $*" >&2; }

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual env $VENV"
  "$BASE_PY" -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMPS="$VENV/.ssml_fast_stamps"
mkdir -p "$STAMPS"

deps_key=$(cat "$ROOT/scripts/setup.sh" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
if [ "$(cat "$STAMPS/deps" 2>/dev/null)" != "$deps_key" ]; then
  log "installing $TORCH_SPEC and dependencies (first run: about 2 minutes)"
  pip_log="$STAMPS/pip.log"
  # shellcheck disable=SC2086
  if ! { "$PY" -m pip install -q --upgrade pip && "$PY" -m pip install -q $TORCH_SPEC &&
         "$PY" -m pip install -q numpy faiss-cpu scikit-learn adamp mlxtend matplotlib tqdm pyyaml tensorboard \
           pytest hypothesis pytest-benchmark "pytorch-metric-learning==2.9.*" \
           "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja; } > "$pip_log" 2>&1; then
    tail -n 40 "$pip_log" >&2
    log "dependency install failed; full log: $pip_log"
    exit 1
  fi
  echo "$deps_key" > "$STAMPS/deps"
  rm -f "$STAMPS/build"
fi

# The editable install maps the package's files when it is made: a new Python file needs a reinstall
# too (otherwise a new package imports as an empty namespace package), so its name is part of the key.
src_key=$(cd "$ROOT" && { find csrc -type f | LC_ALL=C sort | xargs sha256sum; sha256sum CMakeLists.txt pyproject.toml;
                          find ssml_fast -name '*.py' | LC_ALL=C sort; } | sha256sum | cut -c1-16)
if [ "$(cat "$STAMPS/build" 2>/dev/null)" != "$src_key" ] || ! (cd / && "$PY" -c "import ssml_fast" 2>/dev/null); then
  log "building the extension (C++ and, with a CUDA torch and nvcc, CUDA kernels; a few minutes the first time)"
  if ! "$PY" -m pip install -q --no-build-isolation --no-deps -e "$ROOT" > "$STAMPS/build.log" 2>&1; then
    tail -n 60 "$STAMPS/build.log" >&2
    log "build failed; full log: $STAMPS/build.log"
    exit 1
  fi
  echo "$src_key" > "$STAMPS/build"
fi
echo "$PY"
