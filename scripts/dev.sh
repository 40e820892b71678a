#!/usr/bin/env bash
# fedsec's one entry point for a fresh Debian machine with Python 3.11, 3.12 or 3.13 (PYTHON=python3.12 ...):
#   bash scripts/dev.sh quickstart   set everything up, then run experiments/quickstart.toml
#   bash scripts/dev.sh test         set everything up, then run the checks and the test suite (slow cases skipped)
#   bash scripts/dev.sh slow         set everything up, then run only the slow cases (pytest -m slow)
#   bash scripts/dev.sh lint         the package list, lint-imports (on the installed layout) and ruff only
#   bash scripts/dev.sh setup        set everything up
# Setup is idempotent: Debian's dataset-fashion-mnist, a virtualenv in .venv, and the Python dependencies
# (torch pinned to 2.13.0, installed first; pip's find-links should offer the CPU build for your Python, or pip
# takes PyPI's CUDA build, several GB); where a Python 3.10 is found, .venv-openfhe for threshold CKKS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

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
    echo "error: $PYTHON not found; install Python 3.11, 3.12 or 3.13 (Debian: apt-get install python3.11" \
         "python3.11-venv) or name one with PYTHON=python3.12" >&2
    exit 1
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))'; then
    echo "error: $PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())');" \
         "fedsec needs Python 3.11-3.13" >&2
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
    "$VENV/bin/python" -m pip install -q -e ".[test,mlflow]"
    touch "$stamp"
  fi
  # ByzFL, the reference the pre-aggregator kernels are tested against (tests/test_pre_aggregators.py), without its
  # dependencies: they pull torchvision and with it another torch build; its pre-aggregators need only numpy, scipy
  # and torch
  if ! "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('byzfl') is None)"; then
    "$VENV/bin/python" -m pip install -q --no-deps "byzfl==0.0.11"
  fi
  # OpenFHE, for encryption.trust = "threshold", runs in a side process of a Python 3.10 (its PyPI wheel imports
  # nowhere else): made here where a Python 3.10 is found; otherwise threshold configs are refused with the way out
  # and their tests skip
  if [ ! -x .venv-openfhe/bin/python ] && [ -z "${FEDSEC_OPENFHE_PYTHON:-}" ]; then
    if bash scripts/openfhe_venv.sh >/dev/null 2>&1; then
      echo "== made .venv-openfhe (OpenFHE for threshold CKKS)"
    else
      rm -rf .venv-openfhe
      echo "== no Python 3.10 with OpenFHE: encryption.trust='threshold' unavailable (scripts/openfhe_venv.sh)"
    fi
  fi
}

# The layer contract in pyproject.toml, checked on the installed layout: grimp walks the fedsec package folder,
# and the top-level strategies/ and clients/ folders become fedsec.strategies and fedsec.clients only through
# pyproject's package-dir mapping, so scripts/package_tree.py stages the tree a wheel installs (setuptools'
# build_py, into a temporary folder) after checking pyproject's package list against the source tree; lint-imports
# runs there, where `fedsec` is the staged copy (PYTHONPATH comes before the editable install's finder).
lint_imports() {
  local stage
  stage=$(mktemp -d "${TMPDIR:-/tmp}/fedsec-lint-imports.XXXXXX")
  local rc=0
  "$VENV/bin/python" scripts/package_tree.py --stage "$stage" || rc=$?
  if [ "$rc" = 0 ]; then
    cp pyproject.toml "$stage/"  # lint-imports reads the contracts from the current folder's pyproject.toml
    (cd "$stage" && PYTHONPATH="$stage" "$ROOT/$VENV/bin/lint-imports" --no-cache) || rc=$?
  fi
  rm -rf "$stage"
  return "$rc"
}

cmd=${1:-}
shift || true
case "$cmd" in
  quickstart)
    setup_debian
    setup_python
    exec "$VENV/bin/fedsec" run experiments/quickstart.toml "$@"
    ;;
  lint)
    setup_python
    echo "== package list and lint-imports (the layer contract in pyproject.toml, on the installed layout)"
    lint_imports
    echo "== ruff check"
    exec "$VENV/bin/ruff" check .
    ;;
  test)
    setup_debian
    setup_python
    echo "== package list and lint-imports (the layer contract in pyproject.toml, on the installed layout)"
    lint_imports
    echo "== ruff check"
    "$VENV/bin/ruff" check .
    if [ -f mkdocs.yml ]; then
      echo "== mkdocs build --strict"
      # NO_MKDOCS_2_WARNING: mkdocs-material 9.8's end-of-life banner, printed on every build; no -q: it hides the
      # warnings (a broken link or anchor) from --strict too, and the build passes with them
      NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict -d "${TMPDIR:-/tmp}/fedsec-site"
    fi
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  slow)
    setup_debian
    setup_python
    exec "$VENV/bin/python" -m pytest -m slow "$@"
    ;;
  setup)
    setup_debian
    setup_python
    ;;
  *)
    echo "usage: bash scripts/dev.sh {quickstart|test|slow|lint|setup} [args...]" >&2
    exit 2
    ;;
esac
