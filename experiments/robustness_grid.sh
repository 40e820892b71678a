#!/usr/bin/env bash
# Every strategy against label flipping (30%), ALIE (20%, omniscient) and a boosted backdoor (10%) on
# Fashion-MNIST, 5 rounds each (the README's robustness table). Resumable: finished cells are skipped.
#   bash experiments/robustness_grid.sh [OUT_DIR]      (about 40 runs of ~1 minute on 2 cores)
# Until `fedsec sweep` exists this is the documented loop; bulyan runs with num_malicious=1 (n >= 4f+3 with
# 10 clients per round).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/robustness-grid}
mkdir -p "$out"
fedsec=${FEDSEC:-.venv/bin/fedsec}
for strategy in fedavg krum multikrum bulyan median trimmed_mean geomed norm_clipping centered_clipping \
                fltrust flame foolsgold dnc; do
  extra=()
  [ "$strategy" = bulyan ] && extra=(--set defense.num_malicious=1)
  for attack in labelflip alie backdoor; do
    case $attack in
      labelflip) cfg=experiments/fmnist_labelflip.toml; aset=();;
      alie) cfg=experiments/fmnist_alie.toml; aset=(--set attack.knowledge=omniscient);;
      backdoor) cfg=experiments/fmnist_backdoor.toml; aset=();;
    esac
    cell="$out/$strategy-$attack"
    [ -f "$cell/summary.json" ] && continue
    "$fedsec" run "$cfg" --set defense.strategy="$strategy" "${extra[@]}" "${aset[@]}" --set rounds=5 --out "$cell"
  done
done
