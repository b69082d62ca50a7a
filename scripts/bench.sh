#!/usr/bin/env bash
# The benchmark suite behind docs/performance.md: baseline vs KD step against the FLOP model,
# dense vs chunked loss (time and memory), MFU where the device's peak is known.
#
#   bash scripts/bench.sh [--dry-run] [OUTDIR]   writes OUTDIR/<name>.json and OUTDIR/<name>.txt (default: bench/)
#
# --dry-run prints every case's command (the CPU and the accelerator cases) instead of running it.
# On CPU it runs the CPU cases (a few minutes on 2 cores); on an accelerator it runs the
# accelerator cases: a ~125M and a ~1B student with a teacher about 1/3 their size, vocabularies
# of 32K and 256K, bf16 compute with float32 parameters, the teacher held in bf16.
set -euo pipefail
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${1:-bench}"
run() {  # run NAME ARGS...: one benchmark, its table on stdout and in NAME.txt, its numbers in NAME.json
  local name="$1"; shift
  if (( DRY )); then echo "python -m salt_jax.bench $* --out=$OUT/$name.json"; return; fi
  mkdir -p "$OUT"
  echo "== $name: python -m salt_jax.bench $*"
  python -m salt_jax.bench "$@" --out="$OUT/$name.json" | tee "$OUT/$name.txt"
}

if (( DRY )) || python -c "import jax, sys; sys.exit(jax.default_backend() != 'cpu')"; then
  DEMO=(--config=configs/bench.py)  # demo-student <- demo-teacher, batch 16 x 128, float32
  V32K=(--config.data.batch_size=8 --config.model.vocab_size=32000)
  run demo-dense "${DEMO[@]}" --repeats=10
  run demo-chunked "${DEMO[@]}" --repeats=10 --config.train.loss=chunked --config.train.loss_chunk=32 \
    --noloss_bench
  run demo32k-dense "${DEMO[@]}" "${V32K[@]}" --repeats=5 --noloss_bench
  run demo32k-chunked "${DEMO[@]}" "${V32K[@]}" --repeats=5 --config.train.loss=chunked \
    --config.train.loss_chunk=32 --noloss_bench
  LOSS=(--config=configs/bench.py:gpu-125m --config.data.seq_len=256 --repeats=3 --loss_only)  # teacher gpu-50m
  run loss-125m-32k "${LOSS[@]}" --config.data.batch_size=4 --config.train.loss_chunk=64
  run loss-125m-256k "${LOSS[@]}" --config.data.batch_size=2 --config.model.vocab_size=256000 \
    --config.train.loss_chunk=32
fi
if (( DRY )) || ! python -c "import jax, sys; sys.exit(jax.default_backend() != 'cpu')"; then
  BF16=(--config.model.dtype=bfloat16 --config.salt.teacher_dtype=bfloat16 --config.data.seq_len=2048
        --config.train.loss=chunked --repeats=10)
  # configs/bench.py pairs gpu-125m with teacher gpu-50m and gpu-1b with gpu-350m
  run gpu-125m-32k --config=configs/bench.py:gpu-125m --config.data.batch_size=32 --config.train.loss_chunk=512 \
    "${BF16[@]}"
  run gpu-125m-256k --config=configs/bench.py:gpu-125m --config.data.batch_size=8 --config.model.vocab_size=256000 \
    --config.train.loss_chunk=256 "${BF16[@]}"
  run gpu-1b-32k --config=configs/bench.py:gpu-1b --config.data.batch_size=16 --config.train.loss_chunk=512 \
    --config.model.remat=save_dots "${BF16[@]}"
  run gpu-1b-256k --config=configs/bench.py:gpu-1b --config.data.batch_size=4 --config.model.vocab_size=256000 \
    --config.train.loss_chunk=256 --config.model.remat=save_dots "${BF16[@]}"
fi
