#!/usr/bin/env bash
# Train on several GPU hosts without a scheduler: one process per host, started over ssh, joined by
# JAX's distributed runtime (process 0's host is the coordinator).
#
#   HOSTS=gpu0,gpu1 bash scripts/multinode.sh [--dry-run] -- --config=configs/demo.py:salt --workdir=/shared/runs/x
#
# Variables:
#   HOSTS      comma-separated hosts, the first is the coordinator (required)
#   PORT       coordinator port (default 8476)
#   REMOTE_DIR this checkout's path on every host, with its .venv (default: the same path as here)
# The workdir must be on a filesystem every host sees (NFS, Lustre, a mounted bucket): Orbax writes
# checkpoints collectively into it. On SLURM use scripts/slurm.sbatch instead.
# --dry-run prints the ssh commands instead of running them.
set -euo pipefail
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
[[ "${1:-}" == "--" ]] && shift
[[ -n "${HOSTS:-}" ]] || { echo "error: set HOSTS=host0,host1,... (the first is the coordinator)" >&2; exit 2; }
(( $# )) || { echo "error: give the salt_jax.main flags after --, e.g. -- --config=... --workdir=..." >&2; exit 2; }
IFS=, read -r -a hosts <<< "$HOSTS"
PORT="${PORT:-8476}"
REMOTE_DIR="${REMOTE_DIR:-$(pwd)}"
args=$(printf ' %q' "$@")
pids=()
for i in "${!hosts[@]}"; do
  cmd="cd $REMOTE_DIR && .venv/bin/python -m salt_jax.main$args --coordinator_address=${hosts[0]}:$PORT --num_processes=${#hosts[@]} --process_id=$i"
  if (( DRY )); then
    echo "ssh ${hosts[$i]} $(printf '%q' "$cmd")"
  else
    ssh "${hosts[$i]}" "$cmd" > "multinode-$i.log" 2>&1 &
    pids+=($!)
  fi
done
(( DRY )) && exit 0
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
