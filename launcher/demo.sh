#!/usr/bin/env bash
# make demo: synthetic data -> webdataset (or DEMO_FORMAT=mds) shards -> 2-rank DeepSpeed pretraining on the CPU -> eval.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}  # the virtual environment to run in (make demo builds .venv)
PY=$VENV/bin/python
DATA=${DEMO_DATA:-demo_data}
RUN=runs/demo
FORMAT=${DEMO_FORMAT:-wds}  # wds (webdataset tar) | mds (mosaicml-streaming)
export PYTHONUNBUFFERED=1
# A free port unless DEMO_PORT names one: the launcher's default 29500 may be taken by another run on this host.
PORT=${DEMO_PORT:-$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

echo "== 1/5 synthetic pedestrians (LUPerson-MLLM layout + CUHK-PEDES-layout test set)"
$PY -m data.synthetic --out "$DATA" --seed 0 --train-images 2400 --test-identities 100 --images-per-test-identity 3 --overwrite --no-progress
echo "== 2/5 pack into $FORMAT shards"
rm -rf "$DATA/shards"
$PY -m data.pack --images "$DATA/luperson_mllm/imgs" --out "$DATA/shards" --images-per-shard 300 --format "$FORMAT" \
  --workers 2 --captions "$DATA"/luperson_mllm/{Ts-qwen,Ts-shikra,Td-qwen,Td-shikra}.json
echo "== 3/5 the untrained model on the held-out test set"
$PY -m eval --config configs/demo_cpu.yaml --dataset cuhk-pedes --root "$DATA/cuhk_pedes"
echo "== 4/5 pretrain with SDM + NAM: 2 ranks through the deepspeed launcher (CPU, gloo)"
rm -rf "$RUN"
"$VENV/bin/deepspeed" --num_gpus 2 --master_port "$PORT" --module launcher.train --config configs/demo_cpu.yaml "data.shards=$DATA/shards" \
  "eval.cuhk_pedes=$DATA/cuhk_pedes" "train.run_dir=$RUN"
echo "== 5/5 the trained model on the held-out test set"
$PY -m eval --checkpoint "$RUN" --dataset cuhk-pedes --root "$DATA/cuhk_pedes" --out "$RUN/eval_test.json"
bash launcher/demo_search.sh "$RUN" "$DATA/cuhk_pedes"
