#!/usr/bin/env bash
# Run the gpu_small experiment (or any experiment config) on one GPU host.
#
#   bash scripts/gpu_host.sh [CONFIG] [WORKDIR] [extra --config.* flags...]
#   bash scripts/gpu_host.sh configs/experiments/gpu_small.py runs/gpu_small --config.seeds=0,1
#
# Variables you may set: SALT_JAX_CACHE (token cache, default ~/.cache/salt_jax),
# XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9 here).
set -euo pipefail
CONFIG="${1:-configs/experiments/gpu_small.py}"
WORKDIR="${2:-runs/gpu_small}"
shift $(( $# > 2 ? 2 : $# ))
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export TF_CPP_MIN_LOG_LEVEL=3
python -c "import jax; print('devices:', jax.devices())"
exec python -m salt_jax.experiment --config="$CONFIG" --workdir="$WORKDIR" "$@"
