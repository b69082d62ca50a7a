#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (every worker runs the same command; JAX finds its peers itself).
#
#   bash scripts/tpu_pod.sh [--dry-run] STEP [-- extra salt_jax.main flags...]
#
# STEP is one of (in order):
#   compile  compile the run for the slice on this machine (needs libtpu, not a TPU: pip install -e '.[tpu]')
#            and say whether it fits; `run` does this first and refuses a run that does not fit
#   create   create the TPU VM slice (spot by default: preemptions are handled, see docs/faults.md)
#   copy     copy this checkout to every worker
#   setup    install salt_jax with JAX for TPU on every worker and mount the shared workdir bucket
#   run      start training on every worker (re-run after a preemption: it resumes)
#   logs     print the tail of the run's metrics.jsonl (written by worker 0)
#   delete   delete the slice
# --dry-run prints the gcloud commands instead of running them.
#
# Variables (the ones without a default must be set):
#   TPU_NAME       name of the slice                              e.g. salt-v5p-32
#   ZONE           its zone                                       e.g. us-east5-a
#   PROJECT        the Google Cloud project
#   ACCELERATOR    slice type (default v5p-32); also the topology the compile check uses
#   RUNTIME        TPU VM image (default v2-alpha-tpuv5)
#   BUCKET         GCS bucket mounted at /gcs/$BUCKET on every worker (checkpoints must be shared)
#   CONFIG         run config (default configs/demo.py:salt)
#   RUN_NAME       workdir name under /gcs/$BUCKET/runs (default demo)
#   SPOT           1 = spot capacity (default), 0 = on-demand
#   COMPILE_CHECK  1 = `run` compile-checks the config for ACCELERATOR first (default), 0 = skip it
#   PYTHON         the Python with salt_jax[tpu] installed, for the compile check (default python3)
set -euo pipefail
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
STEP="${1:-}"
shift || true
[[ "${1:-}" == "--" ]] && shift
EXTRA=("$@")

die() { echo "error: $*" >&2; exit 2; }
need() { for v in "$@"; do [[ -n "${!v:-}" ]] || die "set $v (see the header of scripts/tpu_pod.sh)"; done; }
run() { if (( DRY )); then printf '%q ' "$@"; echo; else "$@"; fi; }

ACCELERATOR="${ACCELERATOR:-v5p-32}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5}"
CONFIG="${CONFIG:-configs/demo.py:salt}"
RUN_NAME="${RUN_NAME:-demo}"
SPOT="${SPOT:-1}"
JAX_TPU="jax[tpu]==0.10.2"
PYTHON="${PYTHON:-python3}"

compile_check() {  # memory only (one compile per program); the full estimate: python -m salt_jax.compile
  run "$PYTHON" -m salt_jax.compile --config="$CONFIG" --topology="$ACCELERATOR" --noestimate \
    --out="compile-check-$ACCELERATOR.json" "${EXTRA[@]}" \
    || die "$CONFIG does not fit a $ACCELERATOR (or failed to compile for it): see the table above"
}

case "$STEP" in
  compile)
    compile_check ;;
  create)
    need TPU_NAME ZONE PROJECT
    spot=(); (( SPOT )) && spot=(--spot)
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${spot[@]}" ;;
  copy)
    need TPU_NAME ZONE PROJECT
    run gcloud compute tpus tpu-vm scp --recurse --worker=all --zone="$ZONE" --project="$PROJECT" \
      "$(pwd)" "$TPU_NAME:~/salt_jax" ;;
  setup)
    need TPU_NAME ZONE PROJECT BUCKET
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --zone="$ZONE" --project="$PROJECT" --command \
      "cd ~/salt_jax && python3 -m venv .venv && .venv/bin/pip install -e . '$JAX_TPU' && sudo mkdir -p /gcs/$BUCKET && (mountpoint -q /gcs/$BUCKET || sudo gcsfuse --implicit-dirs -o allow_other $BUCKET /gcs/$BUCKET)" ;;
  run)
    need TPU_NAME ZONE PROJECT BUCKET
    (( ${COMPILE_CHECK:-1} )) && compile_check
    extra=$(printf ' %q' "${EXTRA[@]}")
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --zone="$ZONE" --project="$PROJECT" --command \
      "cd ~/salt_jax && nohup .venv/bin/python -m salt_jax.main --config=$CONFIG --workdir=/gcs/$BUCKET/runs/$RUN_NAME${extra} > ~/train.log 2>&1 &" ;;
  logs)
    need TPU_NAME ZONE PROJECT BUCKET
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=0 --zone="$ZONE" --project="$PROJECT" --command \
      "tail -n 20 ~/train.log; tail -n 5 /gcs/$BUCKET/runs/$RUN_NAME/metrics.jsonl" ;;
  delete)
    need TPU_NAME ZONE PROJECT
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --quiet ;;
  *)
    die "give a step: compile | create | copy | setup | run | logs | delete (optionally after --dry-run)" ;;
esac
