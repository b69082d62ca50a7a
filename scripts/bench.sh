#!/usr/bin/env bash
# The benchmark suite behind docs/performance.md: baseline vs KD step against the FLOP model,
# dense vs chunked loss (time and memory), MFU where the device's peak is known.
#
#   bash scripts/bench.sh [OUTDIR]      writes OUTDIR/<name>.json and OUTDIR/<name>.txt (default: bench/)
#
# On CPU it runs the CPU cases (a few minutes on 2 cores); on an accelerator it runs the
# accelerator cases: a ~125M and a ~1B student with a teacher about 1/3 their size, vocabularies
# of 32K and 256K, bf16 compute with float32 parameters, the teacher held in bf16.
set -euo pipefail
OUT="${1:-bench}"
mkdir -p "$OUT"
run() {  # run NAME ARGS...: one benchmark, its table on stdout and in NAME.txt, its numbers in NAME.json
  local name="$1"; shift
  echo "== $name: python -m salt_jax.bench $*"
  python -m salt_jax.bench "$@" --out="$OUT/$name.json" | tee "$OUT/$name.txt"
}

if python -c "import jax, sys; sys.exit(jax.default_backend() != 'cpu')"; then
  run demo-dense --student=demo-student --teacher=demo-teacher --batch=16 --seq=128 --repeats=10 --loss=dense
  run demo-chunked --student=demo-student --teacher=demo-teacher --batch=16 --seq=128 --repeats=10 \
    --loss=chunked --chunk=32 --no-loss-bench
  run demo32k-dense --student=demo-student --teacher=demo-teacher --batch=8 --seq=128 --vocab=32000 --repeats=5 \
    --loss=dense --no-loss-bench
  run demo32k-chunked --student=demo-student --teacher=demo-teacher --batch=8 --seq=128 --vocab=32000 --repeats=5 \
    --loss=chunked --chunk=32 --no-loss-bench
  run loss-125m-32k --student=gpu-125m --teacher=gpu-50m --batch=4 --seq=256 --chunk=64 --repeats=3 --loss-only
  run loss-125m-256k --student=gpu-125m --teacher=gpu-50m --batch=2 --seq=256 --vocab=256000 --chunk=32 \
    --repeats=3 --loss-only
else
  BF16=(--dtype=bfloat16 --teacher-dtype=bfloat16 --repeats=10)
  run gpu-125m-32k --student=gpu-125m --teacher=gpu-50m --batch=32 --seq=2048 --loss=chunked --chunk=512 "${BF16[@]}"
  run gpu-125m-256k --student=gpu-125m --teacher=gpu-50m --batch=8 --seq=2048 --vocab=256000 --loss=chunked \
    --chunk=256 "${BF16[@]}"
  run gpu-1b-32k --student=gpu-1b --teacher=gpu-350m --batch=16 --seq=2048 --loss=chunked --chunk=512 \
    --remat=save_dots "${BF16[@]}"
  run gpu-1b-256k --student=gpu-1b --teacher=gpu-350m --batch=4 --seq=2048 --vocab=256000 --loss=chunked \
    --chunk=256 --remat=save_dots "${BF16[@]}"
fi
