#!/usr/bin/env bash
# A virtualenv for benchmarks/bench_threshold_ckks.py, apart from the project's .venv: OpenFHE's PyPI wheel
# (openfhe 1.6.1.0.22.4, one py3-none-any wheel holding a CPython 3.10 extension) imports only on Python 3.10.
# Usage: bash scripts/openfhe_venv.sh   (PYTHON310=/path/to/python3.10 to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON310:-}"
if [[ -z "$py" ]]; then
  for candidate in "$HOME/.pyenv/versions/3.10"*/bin/python3.10 python3.10; do
    if "$candidate" -c "import sys; assert sys.version_info[:2] == (3, 10)" >/dev/null 2>&1; then
      py="$candidate"; break
    fi
  done
fi
if [[ -z "$py" ]]; then
  echo "openfhe_venv: no Python 3.10 found (OpenFHE's wheel imports only on 3.10); set PYTHON310=..." >&2
  exit 2
fi
"$py" -m venv .venv-openfhe
.venv-openfhe/bin/pip install -q "openfhe==1.6.1.0.22.4" numpy
.venv-openfhe/bin/python -c "import openfhe; print('openfhe imports on', __import__('sys').version.split()[0])"
