"""Benchmark pairs for python -m salt_jax.bench (scripts/bench.sh, docs/performance.md).

    --config=configs/bench.py                 demo-student <- demo-teacher
    --config=configs/bench.py:STUDENT         any preset as the student; its teacher from PAIRS below

Everything else is base_config's defaults: batch 16 x 128, float32, dense loss (chunks of 256
positions when chunked), no remat, attention auto. Override any field, e.g.
--config.data.batch_size=8 --config.model.vocab_size=32000 --config.train.loss=chunked
--config.model.dtype=bfloat16 --config.salt.teacher_dtype=bfloat16, and the teacher with
--config.salt.teacher_preset=PRESET. Parameters are random: the benchmark reads no checkpoint.
"""

from salt_jax.config import base_config, set_method

# student preset -> teacher preset (smaller; the pairs the benchmarks measure)
PAIRS = {"test-tiny": "test-tiny-teacher", "demo-student": "demo-teacher", "repro-student": "repro-teacher",
         "gpu-125m": "gpu-50m", "gpu-1b": "gpu-350m", "paper-2.8b": "paper-1.5b", "paper-8.6b": "paper-2.8b"}


def get_config(student: str = "demo-student"):
    c = base_config(student)
    c.salt.teacher_preset = PAIRS.get(student, "")  # "" = give the bench --teacher=PRESET
    return set_method(c, "rkd")  # the KD step runs w0 on every step
