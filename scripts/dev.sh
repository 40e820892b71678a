#!/usr/bin/env bash
# fedsec's one entry point for a fresh Debian machine with Python 3.11:
#   bash scripts/dev.sh quickstart   set everything up, then run experiments/quickstart.toml
#   bash scripts/dev.sh test         set everything up, then run the test suite
# Setup is idempotent: Debian's dataset-fashion-mnist, a virtualenv in .venv, and the Python dependencies
# (torch pinned to 2.13.0, the CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
FMNIST_DIR=/usr/share/datasets/fashion-mnist

setup_debian() {
  if [ -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] || [ -f "$FMNIST_DIR/train-images-idx3-ubyte" ]; then
    return
  fi
  local sudo=""
  if [ "$(id -u)" != "0" ]; then sudo="sudo"; fi
  echo "== installing Debian's dataset-fashion-mnist"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist
}

setup_python() {
  if ! command -v "$PYTHON" >/dev/null; then
    echo "error: $PYTHON not found; install Python 3.11 (Debian: apt-get install python3.11 python3.11-venv)" >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.fedsec-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== installing Python dependencies (torch==2.13.0 first, so nothing pulls a CUDA build)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    touch "$stamp"
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  quickstart)
    setup_debian
    setup_python
    exec "$VENV/bin/fedsec" run experiments/quickstart.toml "$@"
    ;;
  test)
    setup_debian
    setup_python
    echo "== lint-imports (the layer contract in pyproject.toml)"
    "$VENV/bin/lint-imports" --no-cache
    echo "== ruff check"
    "$VENV/bin/ruff" check .
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  setup)
    setup_debian
    setup_python
    ;;
  *)
    echo "usage: bash scripts/dev.sh {quickstart|test|setup} [args...]" >&2
    exit 2
    ;;
esac
