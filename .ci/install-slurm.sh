#!/usr/bin/env bash
# Slurm and munge for tests/test_slurm.py, which starts its own single-node cluster (munged, slurmctld, slurmd on
# loopback, every file in a temporary folder; see tests/slurm_cluster.py). Debian's packages; needs root (apt).
# The packages' own services stay off: there is no init system here, and the tests never use /etc/slurm.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
