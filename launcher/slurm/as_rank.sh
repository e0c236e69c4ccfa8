#!/usr/bin/env bash
# One torch.distributed rank per Slurm task: srun starts this once per task, and it runs its arguments with
# RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE taken from the task's Slurm environment. MASTER_ADDR and
# MASTER_PORT come from the batch script. With --gpus-per-node every task sees all GPUs of its node and
# takes the LOCAL_RANK-th (engine/runtime/deepspeed_setup.py).
set -euo pipefail
: "${SLURM_PROCID:?run this under srun}" "${MASTER_ADDR:?set by the batch script}" "${MASTER_PORT:?set by the batch script}"
export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
export LOCAL_WORLD_SIZE=$(((SLURM_NTASKS + SLURM_NNODES - 1) / SLURM_NNODES))  # tasks per node, spread evenly
exec "$@"
