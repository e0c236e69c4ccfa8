#!/usr/bin/env bash
# make demo: the paper's pipeline on built-in synthetic data, on the CPU (docs/ablation.md describes the world).
#   a "web" corpus -> a stand-in for web-pretrained CLIP (2 DeepSpeed ranks), saved in OpenAI's ViT-B-16.pt layout
#   -> LUPerson-MLLM-like pretraining from it with SDM + NAM (2 ranks, loaded through model.pretrained)
#   -> direct transfer to synthetic CUHK-PEDES, ICFG-PEDES and RSTPReid test sets -> person search.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}  # the virtual environment to run in (make demo builds .venv)
PY=$VENV/bin/python
DATA=${DEMO_DATA:-demo_data}
RUN=runs/demo
CLIP_RUN=runs/demo_stand_in
CLIP_PT=$DATA/stand_in_clip.pt
FORMAT=${DEMO_FORMAT:-wds}  # wds (webdataset tar) | mds (mosaicml-streaming)
TARGET_SETS=(cuhk-pedes:cuhk_pedes icfg-pedes:icfg_pedes rstpreid:rstpreid)
export PYTHONUNBUFFERED=1
# A free port unless DEMO_PORT names one: the launcher's default 29500 may be taken by another run on this host.
free_port() { $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=${DEMO_PORT:-$(free_port)}

eval_targets() {  # eval_targets NAME MODEL_ARGS...: R1 / mAP on the test split of each target set
  local name=$1; shift
  for pair in "${TARGET_SETS[@]}"; do
    $PY -m eval "$@" --dataset "${pair%%:*}" --root "$DATA/targets/${pair#*:}" --out "$DATA/eval_${name}_${pair#*:}.json" \
      --overwrite
  done
}

echo "== 1/7 synthetic data: the web corpus, the LUPerson-MLLM-like set (15% wrong words) and three target sets"
mkdir -p "$DATA"
$PY -m data.synthetic.web --out "$DATA/web" --seed 0 --images "${DEMO_WEB_IMAGES:-2000}" --overwrite
$PY -m data.synthetic --out "$DATA" --seed 0 --train-images "${DEMO_TRAIN_IMAGES:-1200}" --test-identities 100 \
  --images-per-test-identity 3 --overwrite --no-progress
$PY -m data.synthetic.targets --out "$DATA/targets" --seed 0 --test-identities 100 --images-per-identity 2 --overwrite
echo "== 2/7 pack both into $FORMAT shards"
rm -rf "$DATA/shards" "$DATA/web_shards"
$PY -m data.pack --images "$DATA/web/imgs" --out "$DATA/web_shards" --images-per-shard 250 --format "$FORMAT" \
  --workers 2 --captions "$DATA"/web/web-{a,b}.json
$PY -m data.pack --images "$DATA/luperson_mllm/imgs" --out "$DATA/shards" --images-per-shard 300 --format "$FORMAT" \
  --workers 2 --captions "$DATA"/luperson_mllm/{Ts-qwen,Ts-shikra,Td-qwen,Td-shikra}.json
echo "== 3/7 the stand-in for web-pretrained CLIP: 2 ranks through the deepspeed launcher (CPU, gloo)"
rm -rf "$CLIP_RUN"
# 2 ranks x 32 = the config's global batch of 64, its 8 epochs: the ablation's stand-in recipe (docs/ablation.md).
"$VENV/bin/deepspeed" --num_gpus 2 --master_port "$PORT" --module launcher.train --config configs/synthetic_clip.yaml \
  "data.shards=$DATA/web_shards" "train.run_dir=$CLIP_RUN" train.batch_size=32 ${DEMO_CLIP_OVERRIDES:-}
echo "== 4/7 save it in OpenAI's layout; its zero-shot transfer and its noise AUROC at NAM's tap layer"
$PY -m eval.openai_format --model "$CLIP_RUN/final" --out "$CLIP_PT" --overwrite
eval_targets stand_in --config configs/demo_cpu.yaml "model.pretrained=$CLIP_PT"
$PY -m eval noise-auroc --config configs/demo_cpu.yaml --data "$DATA/luperson_mllm" --max-captions 2000 \
  "model.pretrained=$CLIP_PT"
echo "== 5/7 pretrain from the stand-in with SDM + NAM: 2 ranks through the deepspeed launcher (CPU, gloo)"
rm -rf "$RUN"
"$VENV/bin/deepspeed" --num_gpus 2 --master_port "$(free_port)" --module launcher.train --config configs/demo_cpu.yaml \
  "model.pretrained=$CLIP_PT" "data.shards=$DATA/shards" "eval.cuhk_pedes=$DATA/cuhk_pedes" "train.run_dir=$RUN" \
  ${DEMO_OVERRIDES:-}
echo "== 6/7 direct transfer of the trained model to the three target sets (none was trained on)"
eval_targets trained --checkpoint "$RUN"
echo "== 7/7 person search"
bash launcher/demo_search.sh "$RUN" "$DATA/targets/cuhk_pedes"
