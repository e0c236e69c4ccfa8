#!/usr/bin/env bash
# Pretraining through the deepspeed launcher, on one node or several; a rerun of the same command resumes.
#
#   launcher/train.sh [section.key=value ...]                          this node, all its GPUs
#   HOSTFILE=hostfile launcher/train.sh ...                            every node of the hostfile, over ssh (pdsh)
#   HOSTFILE=hostfile NODE_RANK=i MASTER_ADDR=host0 launcher/train.sh  run on each node i yourself (no ssh)
#
# Environment, with its default:
#   CONFIG         configs/pretrain_luperson_mllm.yaml
#   GPUS_PER_NODE  every visible GPU (with HOSTFILE: its slots=)     ranks per node, one per GPU
#   HOSTFILE       none: this node only                              see hostfile.example
#   NODE_RANK      none: ssh starts the other nodes                  this node's line in HOSTFILE, from 0
#   MASTER_ADDR    127.0.0.1 alone; the first host over ssh          required with NODE_RANK: host 0's address
#   MASTER_PORT    29500                                             rendezvous port on host 0
#   OVERRIDES      none                                              dotted overrides, e.g. "train.batch_size=32"
#   RESUME         auto: the run's latest checkpoint if it has one   auto | latest | none | a checkpoint folder
#   PYTHON         .venv/bin/python
# Exit status: 0 trained; 75 stopped on SIGUSR1/SIGTERM after a checkpoint (run it again to go on); else failed.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-configs/pretrain_luperson_mllm.yaml}
MASTER_PORT=${MASTER_PORT:-29500}
RESUME=${RESUME:-auto}
PYTHON=${PYTHON:-.venv/bin/python}
read -r -a overrides <<<"${OVERRIDES:-}"

fail() { echo "error: $*" >&2; exit 2; }
command -v "$PYTHON" >/dev/null || fail "PYTHON=$PYTHON is not an executable python (make venv creates .venv; on an image, PYTHON=python3)"
[[ -f $CONFIG ]] || fail "CONFIG=$CONFIG: no such config file"
[[ $MASTER_PORT =~ ^[0-9]+$ ]] || fail "MASTER_PORT must be a port number (got '$MASTER_PORT')"

launch=(--master_port "$MASTER_PORT")
if [[ -n ${GPUS_PER_NODE:-} ]]; then
    [[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]] || fail "GPUS_PER_NODE must be a positive number (got '$GPUS_PER_NODE')"
    launch+=(--num_gpus "$GPUS_PER_NODE")
fi
if [[ -n ${HOSTFILE:-} ]]; then
    [[ -f $HOSTFILE ]] || fail "HOSTFILE=$HOSTFILE: no such file (format: hostfile.example)"
    launch+=(--hostfile "$HOSTFILE")
    if [[ -n ${NODE_RANK:-} ]]; then
        [[ $NODE_RANK =~ ^[0-9]+$ ]] || fail "NODE_RANK must be a number from 0 (got '$NODE_RANK')"
        [[ -n ${MASTER_ADDR:-} ]] || fail "NODE_RANK is set, so MASTER_ADDR must name the first host of $HOSTFILE"
        launch+=(--no_ssh --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR")
    elif [[ -n ${MASTER_ADDR:-} ]]; then
        launch+=(--master_addr "$MASTER_ADDR")
    fi
elif [[ -n ${NODE_RANK:-} ]]; then
    fail "NODE_RANK=$NODE_RANK needs HOSTFILE (which node is which)"
fi
resume=()
[[ $RESUME == none ]] || resume=(--resume "$RESUME")

# SIGUSR1 or SIGTERM to the ranks (not to this launcher, which does not forward them) makes them save a checkpoint
# at the next step and exit 75; the deepspeed launcher, sent SIGTERM itself, gives its ranks 30 s before SIGKILL.
exec "$PYTHON" -m deepspeed.launcher.runner "${launch[@]}" --module launcher.train \
    --config "$CONFIG" "${resume[@]}" "${overrides[@]}" "$@"
