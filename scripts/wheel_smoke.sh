#!/usr/bin/env bash
# Build fedsec's wheel and sdist and smoke-test the wheel as users get it, outside the checkout.
#
#   bash scripts/wheel_smoke.sh                 Python 3.11 (the default)
#   bash scripts/wheel_smoke.sh 3.11 3.12 3.13  each version that is found (PATH, ~/.pyenv/versions); missing ones
#                                               are skipped and reported
#
# Steps: a throwaway build venv (build, twine) builds the sdist and, from it, the wheel (`python -m build`); the build
# log must hold no setuptools (deprecation) warning and `twine check --strict` must pass; the wheel must hold every
# module of the source tree at its installed path (strategies/ as fedsec/strategies/, clients/ as fedsec/clients/)
# and nothing at the top level but fedsec. Then, per Python, in a fresh venv: torch==2.13.0 first (pip's find-links should offer
# the CPU build; without one pip takes PyPI's CUDA build, about 4 GB with its nvidia-* packages), then the wheel
# with its `test` extra, and from a temporary folder outside the checkout: `fedsec --version`, `fedsec validate`
# on the checkout's experiments/digits_smoke.toml, `fedsec run` on a copy of it, and pytest on a copy of the smoke
# tests below (against the installed fedsec: the checkout is not on sys.path). Copies come from the sdist, which
# holds the tests and experiments (MANIFEST.in), so a checkout edited during the run cannot skew them.
#
# Environment: SMOKE_TESTS (test files, default below), TORCH_PIP_ARGS (extra pip arguments for torch, e.g.
# "--index-url https://download.pytorch.org/whl/cpu"), WORK (the work folder; default a new one under
# ${TMPDIR:-/tmp}; deleted at the end unless KEEP=1). Disk: about 2.3 GB per Python with the CPU torch, 6 GB with
# PyPI's CUDA build (PIP_NO_CACHE_DIR=1 keeps those wheels out of pip's cache).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSIONS=("$@")
if [ ${#VERSIONS[@]} = 0 ]; then VERSIONS=(3.11); fi
SMOKE_TESTS=${SMOKE_TESTS:-"tests/test_strategies_robust.py tests/test_config.py tests/test_crypto.py"}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/fedsec-wheel-smoke.XXXXXX")}
mkdir -p "$WORK"
if [ "${KEEP:-0}" != 1 ]; then trap 'rm -rf "$WORK"' EXIT; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

SUMMARY="$WORK/summary.txt"
: >"$SUMMARY"
FAILED=0
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

# step NAME LOG COMMAND...: run COMMAND with its output in LOG; record the seconds it took; print LOG's tail on error.
step() {
  local name=$1 log=$2
  shift 2
  local t0
  t0=$(now)
  echo "== $name"
  if "$@" >"$log" 2>&1; then
    printf '%-60s %8ss  ok\n' "$name" "$(elapsed "$t0" "$(now)")" >>"$SUMMARY"
  else
    local rc=$?
    printf '%-60s %8ss  FAILED (exit %s)\n' "$name" "$(elapsed "$t0" "$(now)")" "$rc" >>"$SUMMARY"
    echo "-- $name failed (exit $rc); the end of $log:" >&2
    tail -n 40 "$log" >&2
    return "$rc"
  fi
}

find_python() {
  local v=$1 c
  for c in "python$v" "$HOME"/.pyenv/versions/"$v".*/bin/"python$v" "/usr/bin/python$v" "/usr/local/bin/python$v"; do
    if command -v "$c" >/dev/null 2>&1 \
      && "$c" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" 2>/dev/null; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

# ---- build (once, with the first Python found)
BUILD_PY=""
for v in "${VERSIONS[@]}" 3.11 3.12 3.13; do
  if BUILD_PY=$(find_python "$v"); then break; fi
done
if [ -z "$BUILD_PY" ]; then echo "error: no Python 3.11-3.13 found" >&2; exit 1; fi

build() {
  "$BUILD_PY" -m venv "$WORK/build-venv"
  "$WORK/build-venv/bin/python" -m pip install -q build twine
  "$WORK/build-venv/bin/python" -m build --outdir "$WORK/dist" "$ROOT"
}
step "build sdist + wheel ($("$BUILD_PY" -V))" "$WORK/build.log" build
if grep -n -E -i "deprecat|SetuptoolsWarning" "$WORK/build.log" >&2; then
  echo "error: the build log lines above are setuptools (deprecation) warnings" >&2
  exit 1
fi
WHEEL=$(ls "$WORK"/dist/fedsec-*.whl)
# The sdist's tree (the wheel is built from it): the wheel check, `fedsec run` and the tests use this snapshot, so
# that files edited in the checkout after the build cannot skew them.
mkdir -p "$WORK/sdist"
tar -xzf "$WORK"/dist/fedsec-*.tar.gz -C "$WORK/sdist"
SRC=$(ls -d "$WORK"/sdist/fedsec-*)
step "twine check --strict" "$WORK/twine.log" "$WORK/build-venv/bin/twine" check --strict "$WORK"/dist/*

check_wheel() {
  "$WORK/build-venv/bin/python" - "$WHEEL" "$SRC" <<'EOF'
import sys
import zipfile
from pathlib import Path

wheel, root = sys.argv[1], Path(sys.argv[2])
names = zipfile.ZipFile(wheel).namelist()
problems = []
# every module of the source tree, at the path pyproject's package-dir maps it to
expected = set()
for folder, package in (("fedsec", "fedsec"), ("strategies", "fedsec/strategies"), ("clients", "fedsec/clients")):
    expected |= {f"{package}/{p.relative_to(root / folder).as_posix()}" for p in (root / folder).rglob("*.py")
                 if "__pycache__" not in p.parts}
shipped = {n for n in names if n.endswith(".py")}
if missing := sorted(expected - shipped):
    problems.append(f"missing from the wheel: {missing}")
if extra := sorted(shipped - expected):
    problems.append(f"in the wheel but not in the source tree: {extra}")
for package in ("fedsec/strategies", "fedsec/clients", "fedsec/clients/attacks"):
    count = sum(1 for n in shipped if n.rsplit("/", 1)[0] == package)
    if not count:
        problems.append(f"{package}: no modules")
    print(f"{package}: {count} modules")
tops = sorted({n.split("/", 1)[0] for n in names})
if tops != ["fedsec", next((t for t in tops if t.endswith(".dist-info")), "?")]:
    problems.append(f"top-level entries: {tops} (expected fedsec and its dist-info only)")
print("top level:", tops, f"({len(names)} files, {len(shipped)} modules)")
if problems:
    sys.exit("\n".join(problems))
EOF
}
step "wheel file list" "$WORK/wheel-files.log" check_wheel
cat "$WORK/wheel-files.log"
EXPECTED="fedsec $(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -n 1)"

# ---- per Python
smoke() {
  local v=$1 py=$2 venv="$WORK/venv-$1" run="$WORK/run-$1"
  mkdir -p "$run/tests"
  # shellcheck disable=SC2086
  step "$v: venv + torch==2.13.0" "$WORK/torch-$v.log" \
    bash -c "'$py' -m venv '$venv' && '$venv/bin/python' -m pip install -q torch==2.13.0 ${TORCH_PIP_ARGS:-}" || return 1
  step "$v: pip install fedsec wheel[test]" "$WORK/install-$v.log" \
    "$venv/bin/python" -m pip install -q "$WHEEL[test]" || return 1
  "$venv/bin/python" -c "import torch; print('   torch', torch.__version__, 'CUDA', torch.version.cuda)" || return 1
  echo "   venv size: $(du -sh "$venv" | cut -f1)"
  cd "$run"
  step "$v: import check (installed, no top-level packages)" "$WORK/import-$v.log" "$venv/bin/python" -c "
import importlib.util, sys, fedsec, fedsec.strategies, fedsec.clients.attacks
assert '$ROOT' not in fedsec.__file__, fedsec.__file__
assert importlib.util.find_spec('strategies') is None and importlib.util.find_spec('clients') is None
print(fedsec.__version__, fedsec.strategies.__file__)" || return 1
  step "$v: fedsec --version" "$WORK/version-$v.log" "$venv/bin/fedsec" --version || return 1
  if [ "$(cat "$WORK/version-$v.log")" != "$EXPECTED" ]; then
    echo "error: fedsec --version printed '$(cat "$WORK/version-$v.log")', expected '$EXPECTED'" >&2
    return 1
  fi
  step "$v: fedsec validate (checkout's digits_smoke.toml)" "$WORK/validate-$v.log" \
    "$venv/bin/fedsec" validate "$ROOT/experiments/digits_smoke.toml" || return 1
  cp "$SRC/experiments/digits_smoke.toml" "$run/"
  step "$v: fedsec run (copy of digits_smoke.toml)" "$WORK/run-$v.log" \
    "$venv/bin/fedsec" run digits_smoke.toml --out "$run/out" || return 1
  test -s "$run/out/summary.json" || return 1
  # The smoke tests, their helper modules and the experiments they read, copied from the sdist: rootdir and sys.path
  # are the copy's, so the tests import the installed fedsec.
  local f
  for f in "$SRC"/tests/*.py; do
    case "$(basename "$f")" in test_*) ;; *) cp "$f" "$run/tests/" ;; esac
  done
  for f in $SMOKE_TESTS; do cp "$SRC/$f" "$run/tests/"; done
  cp -r "$SRC/experiments" "$run/experiments"
  printf '[pytest]\naddopts = -rfE -m "not slow and not e2e"\nmarkers =\n    e2e: end-to-end\n    slow: slow\n' \
    >"$run/pytest.ini"
  # shellcheck disable=SC2046
  step "$v: pytest (installed wheel): $(echo $SMOKE_TESTS | xargs -n1 basename | tr '\n' ' ')" \
    "$WORK/pytest-$v.log" "$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$run" \
    $(for f in $SMOKE_TESTS; do echo "tests/$(basename "$f")"; done) || return 1
  tail -n 1 "$WORK/pytest-$v.log"
  cd "$WORK"
}

for v in "${VERSIONS[@]}"; do
  if ! py=$(find_python "$v"); then
    printf '%-60s %8s   skipped (no python%s found)\n' "$v" "-" "$v" >>"$SUMMARY"
    continue
  fi
  if ! smoke "$v" "$py"; then
    FAILED=1
    printf '%-60s %8s   FAILED (see above)\n' "$v" "-" >>"$SUMMARY"
    cd "$WORK"
  fi
done

echo
echo "== summary (work folder $WORK$( [ "${KEEP:-0}" = 1 ] && echo ', kept' ))"
cat "$SUMMARY"
exit "$FAILED"
