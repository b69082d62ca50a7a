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
#   LOG_DIR    where each host's output goes, as multinode-<process id>.log (default: here)
#   SSH_OPTS   ssh options (default: -o BatchMode=yes -o ConnectTimeout=10: no password prompt, no long hang)
# When a host's process fails (ssh cannot reach it, or the run stops), the script names the host and its
# log, stops the other hosts' ssh sessions and exits with that status; a host ssh cannot reach (ssh's 255) is a
# mistake to fix like any other, so the script then exits 2, as every salt_jax command does for one.
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
LOG_DIR="${LOG_DIR:-.}"
SSH_OPTS="${SSH_OPTS:--o BatchMode=yes -o ConnectTimeout=10}"
args=$(printf ' %q' "$@")
(( DRY )) || mkdir -p "$LOG_DIR"
pids=()
for i in "${!hosts[@]}"; do
  cmd="cd $REMOTE_DIR && .venv/bin/python -m salt_jax.main$args --coordinator_address=${hosts[0]}:$PORT --num_processes=${#hosts[@]} --process_id=$i"
  if (( DRY )); then
    echo "ssh $SSH_OPTS ${hosts[$i]} $(printf '%q' "$cmd")"
  else
    # shellcheck disable=SC2086  # (SSH_OPTS: several words)
    ssh $SSH_OPTS "${hosts[$i]}" "$cmd" > "$LOG_DIR/multinode-$i.log" 2>&1 &
    pids+=($!)
  fi
done
(( DRY )) && exit 0
echo "started ${#hosts[@]} processes; their output: $LOG_DIR/multinode-<process id>.log"

# Wait for all; the first host that fails is named (with its log's last line), and the others are stopped:
# they would wait for it in the run's collectives.
status=0
running=${#pids[@]}
while (( running )); do
  running=0
  for i in "${!pids[@]}"; do
    p=${pids[$i]}
    [[ -n "$p" ]] || continue
    if kill -0 "$p" 2>/dev/null; then running=$((running + 1)); continue; fi
    rc=0
    wait "$p" || rc=$?
    pids[$i]=""
    if (( rc )); then
      log="$LOG_DIR/multinode-$i.log"
      last=$(tr -d '\r' 2>/dev/null < "$log" | grep -v '^[[:space:]]*$' | tail -n 1 || true)  # (ssh ends lines with \r\n)
      what="exit status $rc"
      (( rc == 255 )) && what="exit status 255: ssh could not connect, or lost the connection"
      echo "error: host ${hosts[$i]} (process $i) failed ($what): ${last:-no output}; its log: $log" >&2
      (( status )) || { status=$rc; failed=${hosts[$i]}; }
    fi
  done
  if (( status && running )); then
    for p in "${pids[@]}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "error: stopped the ssh sessions of the other hosts; fix $failed and re-run (the run resumes from its latest checkpoint)" >&2
    running=0
  fi
  (( running )) && sleep 1
done
(( status == 255 )) && status=2  # (ssh could not connect: the host list or ssh setup to fix)
exit $status
