#!/usr/bin/env bash
# The config boundary's full fuzz run: tests/test_config_fuzz.py with FEDSEC_FUZZ_EXAMPLES examples per property
# (default 2,200: at least 2,000 generated configs, plus as many plan_from_dict dicts, --set overrides and TOML
# texts, and the regression corpus), every example's verdict tallied instead of stopping at the first failure.
#   bash scripts/fuzz_configs.sh                      # 2,200 examples per property
#   FEDSEC_FUZZ_EXAMPLES=5000 bash scripts/fuzz_configs.sh
# Prints the counts per property (accepted, refused, traceback, hang, memory, bad_message, wrongly_accepted) and
# the first bad cases; exits 1 if any example had a bad verdict or a test failed. Each example must finish within
# 10 s and grow the process's peak memory by less than 500 MB (tests/test_config_fuzz.py: bounded).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
EXAMPLES=${FEDSEC_FUZZ_EXAMPLES:-2200}
TALLY=$(mktemp -t fedsec-fuzz-XXXXXX.jsonl)
trap 'rm -f "$TALLY"' EXIT

status=0
FEDSEC_FUZZ_EXAMPLES=$EXAMPLES FEDSEC_FUZZ_TALLY=$TALLY "$PY" -m pytest -q -p no:cacheprovider -m "not e2e" \
  tests/test_config_fuzz.py -k "fuzz or corpus" || status=$?

"$PY" - "$TALLY" "$status" <<'PYEOF'
import collections, json, sys

tally, pytest_status = sys.argv[1], int(sys.argv[2])
rows = [json.loads(line) for line in open(tally)]
verdicts = ["accepted", "refused", "traceback", "hang", "memory", "bad_message", "wrongly_accepted"]
by_test = collections.defaultdict(collections.Counter)
for row in rows:
    by_test[row["test"]][row["verdict"]] += 1
print(f"{'property':<16}{'examples':>9}" + "".join(f"{v:>17}" for v in verdicts))
total = collections.Counter()
for test, counts in sorted(by_test.items()):
    total.update(counts)
    print(f"{test:<16}{sum(counts.values()):>9}" + "".join(f"{counts[v]:>17}" for v in verdicts))
print(f"{'all':<16}{sum(total.values()):>9}" + "".join(f"{total[v]:>17}" for v in verdicts))
bad = [row for row in rows if row["verdict"] not in ("accepted", "refused")]
for row in bad[:10]:
    print(f"  {row['verdict']}: {row['message']}")
if bad or pytest_status:
    print(f"FAILED: {len(bad)} bad verdicts; pytest exit status {pytest_status}")
    sys.exit(1)
print("0 tracebacks, 0 hangs, 0 memory blow-ups, 0 wrongly accepted")
PYEOF
