#!/usr/bin/env bash
# A virtualenv for benchmarks/bench_peers.py's peer frameworks, apart from the project's .venv (whose torch is
# pinned): pfl-research (pfl on PyPI; Granqvist et al. 2024) with its PyTorch backend, and plain Flower with Ray
# for its simulation engine, both on the same torch as the project. torch goes in first so that neither peer's
# requirements pick another build; the script fails if anything replaced it. Safe to run again.
# Usage: bash scripts/peers_venv.sh   (PYTHON311=/path/to/python3.11 to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="2.13.0"
PFL_VERSION="0.6.0"
FLWR_VERSION="1.42.0"
py="${PYTHON311:-}"
if [[ -z "$py" ]]; then
  for candidate in "$HOME/.pyenv/versions/3.11"*/bin/python3.11 python3.11; do
    if "$candidate" -c "import sys; assert sys.version_info[:2] == (3, 11)" >/dev/null 2>&1; then
      py="$candidate"; break
    fi
  done
fi
if [[ -z "$py" ]]; then
  echo "peers_venv: no Python 3.11 found; set PYTHON311=..." >&2
  exit 2
fi
if [[ ! -x .venv-peers/bin/python ]]; then
  "$py" -m venv .venv-peers
fi
pip=(.venv-peers/bin/python -m pip install -q)
"${pip[@]}" --upgrade pip
"${pip[@]}" "torch==${TORCH_VERSION}"
"${pip[@]}" "torch==${TORCH_VERSION}" "pfl[pytorch]==${PFL_VERSION}" "flwr[simulation]==${FLWR_VERSION}"
.venv-peers/bin/python - "$TORCH_VERSION" "$PFL_VERSION" "$FLWR_VERSION" <<'PY'
import sys
from importlib.metadata import version

torch_want, pfl_want, flwr_want = sys.argv[1:]
import torch  # noqa: E402

got = torch.__version__.split("+")[0]
if got != torch_want:
    sys.exit(f"peers_venv: FAILED: torch is {torch.__version__} in .venv-peers, expected {torch_want} "
             "(a peer's requirements replaced it); delete .venv-peers and look at the pins")
import flwr  # noqa: E402,F401
import pfl  # noqa: E402,F401
import ray  # noqa: E402,F401
from pfl.model.pytorch import PyTorchModel  # noqa: E402,F401

for name, want in (("pfl", pfl_want), ("flwr", flwr_want)):
    if version(name) != want:
        sys.exit(f"peers_venv: FAILED: {name} is {version(name)}, expected {want}")
print(f"peers_venv: .venv-peers ready: torch {torch.__version__}, pfl {version('pfl')}, flwr {version('flwr')}, "
      f"ray {version('ray')}")
PY
