#!/usr/bin/env bash
# Everything that needs a GPU, in one go (about 8 minutes on one H200), from the repository root:
#
#   bash benchmarks/gpu_check.sh [--python PY] [--wheelhouse DIR | --site DIR] [OUT_DIR]
#
#   --python PY        the interpreter (or PYTHON=...); default .venv/bin/python when it exists, else python3
#                      (a PyTorch image's own Python, with its torch, triton and NVIDIA libraries)
#   --wheelhouse DIR   wheels from `python -m launcher.wheelhouse` (or WHEELHOUSE=...): installed offline with
#                      pip --no-index --no-deps into SITE first, which then goes on PYTHONPATH
#   --site DIR         a folder such wheels were installed into already (or SITE=...); with --wheelhouse, where
#                      to install them (default .gpu-check-site, replaced)
#   OUT_DIR            default runs/gpu_check_<UTC time>; it must not exist
#
# 0. the versions found against the ranges pyproject.toml declares (a missing runtime dependency stops here)
# 1. nvidia-smi facts and library versions
# 2. the CUDA-only tests: the compiled Triton kernel against the reference, fp32/fp16/bf16, real and boundary shapes
# 3. the kernel benchmark against einsum+max, with GB/s and the share of the HBM peak
# 4. the step benchmark (configs/pretrain_luperson_mllm.yaml, batch 64, bf16, NAM and EM) with MFU against
#    PEAK_TFLOPS (default 989: the dense bf16 peak of an H100/H200 SXM)
# 5. the reference step (benchmarks/reference_step.py, fp16, batch 64) on the same GPU, for the speed ratio
# 6. 30 training steps of the paper config through the deepspeed launcher (nccl, 1 GPU) from synthetic shards,
#    then a resume for 5 more
# 7. 10 steps in the authors' precision (train.precision=fp16_reference: fp16 weights, no fp32 master copy)
# Each part has its own time limit and a failed part does not stop the others. OUT_DIR gets every part's log and
# JSON, gpu_check.json (all figures) and gpu_check.txt (the table, also printed). Nothing is downloaded.
# Without CUDA it says so and exits 0 having written nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
WHEELHOUSE=${WHEELHOUSE:-}
SITE=${SITE:-}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
fail() { echo "gpu_check: $*" >&2; exit 2; }
while (($#)); do
  case $1 in
    --python) PY=${2:-}; shift 2 || fail "--python needs an interpreter" ;;
    --wheelhouse) WHEELHOUSE=${2:-}; shift 2 || fail "--wheelhouse needs a folder" ;;
    --site) SITE=${2:-}; shift 2 || fail "--site needs a folder" ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) fail "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
if [[ -z $PY ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! command -v "$PY" >/dev/null; then
  fail "$PY not found; run make venv first, or name the interpreter with --python (or PYTHON)"
fi
if [[ -n $WHEELHOUSE ]] && ! compgen -G "$WHEELHOUSE/*.whl" >/dev/null; then
  fail "--wheelhouse $WHEELHOUSE holds no .whl files (python -m launcher.wheelhouse writes them)"
fi
if [[ -n $SITE && -z $WHEELHOUSE && ! -d $SITE ]]; then
  fail "--site $SITE is not a folder"
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False with $PY); nothing to run"
  exit 0
fi
if [[ -n $WHEELHOUSE ]]; then
  SITE=${SITE:-.gpu-check-site}
  rm -rf "$SITE"
  echo "== installing $WHEELHOUSE into $SITE (offline)"
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "$WHEELHOUSE"/*.whl ||
    fail "pip could not install $WHEELHOUSE into $SITE"
fi
if [[ -n $SITE ]]; then
  export PYTHONPATH="$(cd "$SITE" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "== versions ($PY) against pyproject.toml's ranges"
"$PY" -m benchmarks.gpu_check_report check-versions || exit 2

OUT=${1:-runs/gpu_check_$(date -u +%Y%m%dT%H%M%SZ)}
if [[ -e $OUT ]]; then
  echo "gpu_check: $OUT exists; give a new folder" >&2
  exit 2
fi
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
DEEPSPEED=("$PY" -m deepspeed.launcher.runner)  # as a module: a --target install has no deepspeed script
started=$(date +%s)

BUDGET_S=${BUDGET_S:-480}  # the whole check; a part gets at most what is left of it

part() {  # part NAME LIMIT_S COMMAND...: runs COMMAND under a time limit, logs to OUT/NAME.log, notes its status
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  local left=$((BUDGET_S - (t0 - started)))
  if ((left < 10)); then
    echo "== $name skipped: the ${BUDGET_S}s budget is spent"
    echo "{\"part\": \"$name\", \"rc\": null, \"seconds\": 0, \"skipped\": true}" >>"$OUT/parts.jsonl"
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"part\": \"$name\", \"rc\": $rc, \"seconds\": $(($(date +%s) - t0))}" >>"$OUT/parts.jsonl"
  tail -n 3 "$OUT/$name.log"
}

part facts 30 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory,power.limit --format=csv > '$OUT/nvidia_smi.csv'; nvidia-smi; '$PY' -m benchmarks.gpu_check_report versions > '$OUT/versions.json'"
part cuda_tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py --junitxml="$OUT/cuda_tests.xml"
part kernel_benchmark 90 "$PY" -m benchmarks.benchmark_token_patch_max_cosine --batch-sizes 64,256,1024 \
  --dtypes bf16,fp16,fp32 --out "$OUT/kernel_benchmark.json"
part step_benchmark 150 "$PY" -m benchmarks.benchmark_train_step --config configs/pretrain_luperson_mllm.yaml \
  --batch-size 64 --steps 10 --peak-tflops "$PEAK_TFLOPS" --out "$OUT/step_benchmark.json" train.precision=bf16
part reference_step 90 env CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" "$PY" -m benchmarks.reference_step \
  --batch-size 64 --steps 10 --out "$OUT/reference_step.json"
part training_data 60 "$PY" -m benchmarks.gpu_check_report data "$OUT/data"
TRAIN=(--config configs/pretrain_luperson_mllm.yaml "data.shards=$OUT/data/shards" "train.run_dir=$OUT/train"
  model.pretrained=null train.log_every_steps=10 eval.every_epochs=0)
part training 150 "${DEEPSPEED[@]}" --num_gpus 1 --master_port 29641 --module launcher.train "${TRAIN[@]}" train.max_steps=30
part training_resume 90 "${DEEPSPEED[@]}" --num_gpus 1 --master_port 29642 --module launcher.train "${TRAIN[@]}" \
  train.max_steps=35 --resume latest
part training_fp16_reference 90 "${DEEPSPEED[@]}" --num_gpus 1 --master_port 29643 --module launcher.train "${TRAIN[@]}" \
  "train.run_dir=$OUT/train_fp16_reference" train.precision=fp16_reference train.max_steps=10

"$PY" -m benchmarks.gpu_check_report summary "$OUT" --seconds $(($(date +%s) - started))
