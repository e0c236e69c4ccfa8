#!/usr/bin/env bash
# EM versus NAM with the same seed and budget on the demo's synthetic data (run `make demo` first for the data).
# Trains configs/demo_cpu.yaml twice on 2 CPU ranks, then reports held-out R1/mAP and the AUROC of the
# per-token noise r for the recorded wrong attribute words against correct ones.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA=${DEMO_DATA:-demo_data}
export PYTHONUNBUFFERED=1
for masking in em nam; do
  run=runs/compare_$masking
  rm -rf "$run"
  echo "== train with nam.masking=$masking into $run"
  .venv/bin/deepspeed --num_gpus 2 --module launcher.train --config configs/demo_cpu.yaml \
    "data.shards=$DATA/shards" "eval.cuhk_pedes=$DATA/cuhk_pedes" "train.run_dir=$run" "nam.masking=$masking" 2>&1 | grep -E '^(training|done|error)'
  $PY -m eval --checkpoint "$run" --dataset cuhk-pedes --root "$DATA/cuhk_pedes" --out "$run/eval_test.json"
  $PY -m eval.noise_auroc --checkpoint "$run" --data "$DATA/luperson_mllm" --out "$run/noise_auroc.json"
done
$PY - <<'PY'
import json
print(f"{'masking':>8} {'R1':>7} {'mAP':>7} {'noise AUROC':>12}")
for masking in ("em", "nam"):
    metrics = json.load(open(f"runs/compare_{masking}/eval_test.json"))["metrics"]
    auroc = json.load(open(f"runs/compare_{masking}/noise_auroc.json"))["auroc"]["max"]
    print(f"{masking:>8} {metrics['R1']:7.2f} {metrics['mAP']:7.2f} {auroc:12.3f}")
PY
