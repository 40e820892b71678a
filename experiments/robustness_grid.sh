#!/usr/bin/env bash
# Every strategy against label flipping (30%), ALIE (20%, omniscient), a boosted backdoor (10%) and the count
# lie (10%: claims 1e6 examples and sends its negated update) on Fashion-MNIST, 5 rounds each (the README's
# robustness table). The count lie runs under the default defense.weighting = "capped" for every rule, and again
# under "reported" for the rules that use counts. Resumable: finished cells are skipped.
#   bash experiments/robustness_grid.sh [OUT_DIR]      (about 56 runs of ~1 minute on 2 cores)
#   ATTACKS="countlie" bash experiments/robustness_grid.sh [OUT_DIR]   (one column only)
# Until `fedsec sweep` exists this is the documented loop; bulyan runs with num_malicious=1 (n >= 4f+3 with
# 10 clients per round).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/robustness-grid}
mkdir -p "$out"
fedsec=${FEDSEC:-.venv/bin/fedsec}
# run_cell DIR [--set ...]: skip a finished cell, resume an interrupted or killed one, else run it ($cfg).
run_cell() {
  local dir=$1; shift
  local interrupted=0
  grep -qs '"stopped_reason": "interrupted"' "$dir/summary.json" && interrupted=1
  if [ -f "$dir/summary.json" ] && [ $interrupted = 0 ]; then
    return 0
  elif [ -f "$dir/checkpoints/latest.pt" ]; then
    "$fedsec" run --resume "$dir"
  else
    "$fedsec" run "$cfg" "$@" --overwrite --out "$dir"
  fi
}
for strategy in fedavg krum multikrum bulyan median trimmed_mean geomed norm_clipping centered_clipping \
                fltrust flame foolsgold dnc; do
  extra=()
  [ "$strategy" = bulyan ] && extra=(--set defense.num_malicious=1)
  for attack in ${ATTACKS:-labelflip alie backdoor countlie}; do
    case $attack in
      labelflip) cfg=experiments/fmnist_labelflip.toml; aset=();;
      alie) cfg=experiments/fmnist_alie.toml; aset=(--set attack.knowledge=omniscient);;
      backdoor) cfg=experiments/fmnist_backdoor.toml; aset=();;
      countlie) cfg=experiments/fmnist_signflip.toml
                aset=(--set attack.kind=count_lie --set attack.claimed=1e6 --set attack.scale=-1
                      --set attack.fraction=0.1);;
    esac
    cell="$out/$strategy-$attack"
    run_cell "$cell" --set defense.strategy="$strategy" "${extra[@]}" "${aset[@]}" --set rounds=5
    case "$attack-$strategy" in
      countlie-fedavg|countlie-multikrum|countlie-geomed|countlie-norm_clipping)
        run_cell "$cell-reported" --set defense.strategy="$strategy" "${extra[@]}" "${aset[@]}" --set rounds=5 \
          --set defense.weighting=reported;;
    esac
  done
done
