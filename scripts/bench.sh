#!/usr/bin/env bash
# Baseline vs KD step time against the FLOP model, for the preset pairs the docs quote.
#
#   bash scripts/bench.sh [OUTDIR]      writes OUTDIR/bench-<student>.json (default: bench/)
set -euo pipefail
OUT="${1:-bench}"
mkdir -p "$OUT"
python -m salt_jax.bench --student=demo-student --teacher=demo-teacher --batch=16 --seq=128 --out="$OUT/bench-demo-student.json"
python -m salt_jax.bench --student=repro-student --teacher=repro-teacher --batch=8 --seq=128 --out="$OUT/bench-repro-student.json"
if python -c "import jax, sys; sys.exit(jax.default_backend() == 'cpu')"; then  # accelerator only
  python -m salt_jax.bench --student=gpu-100m --teacher=gpu-25m --batch=64 --seq=512 --dtype=bfloat16 --out="$OUT/bench-gpu-100m.json"
fi
