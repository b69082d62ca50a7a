"""Host time of the cross-tokenizer alignment per training step (salt_jax.data.alignment), on real batches.

    python scripts/bench_alignment.py --config=configs/demo.py [--config.* overrides]
        [--teacher_model_type=unigram] [--teacher_vocab=1024] [--teacher_seq_len=160] [--steps=20]

Opens (or builds) the token store of --config's data, trains (or reads from the cache) a teacher
SentencePiece model of --teacher_model_type and --teacher_vocab on the same train split, and times, over
--steps training batches, reading a batch's rows alone and reading and aligning them (what the loader's
read-ahead thread does per KD step). Prints the medians per step, the share of the teacher's tokens that
did not fit --teacher_seq_len (truncated chunks) and the student's targets inside aligned chunks; compare
the per-step time with the KD step's (`python -m salt_jax.bench`, docs/performance.md).
"""

import copy
import statistics
import time

from absl import app, flags
from ml_collections import config_flags

from salt_jax import cli
from salt_jax.data import alignment, sources, tokenizer
from salt_jax.data import batches as batches_lib
from salt_jax.data import store as store_lib
from salt_jax import paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "The student's run config (configs/demo.py).",
                                          lock_config=True)
_TYPE = flags.DEFINE_string("teacher_model_type", "unigram", "The teacher's SentencePiece algorithm (bpe, unigram).")
_VOCAB = flags.DEFINE_integer("teacher_vocab", 1024, "The teacher's SentencePiece vocabulary size.")
_LEN = flags.DEFINE_integer("teacher_seq_len", 160, "The teacher's tokens per window (0 = measured, as a run does).")
_STEPS = flags.DEFINE_integer("steps", 20, "Training batches timed.")


def main(argv):
    del argv
    cli.keep_jax_off_an_absent_tpu()
    config = _CONFIG.value
    store, tok = store_lib.build_store(config.data)
    t_cfg = copy.deepcopy(config.data.tokenizer)
    t_cfg.kind, t_cfg.model_type, t_cfg.vocab_size, t_cfg.model_file = "sentencepiece", _TYPE.value, _VOCAB.value, ""
    cache_dir = paths.expand(config.data.cache_dir or store_lib.default_cache_dir())
    teacher = tokenizer.make_tokenizer(t_cfg, sources.make_source(config.data), cache_dir)
    batches = batches_lib.training_batches(store, config.data.batch_size, config.data.seed)
    aligner = alignment.Aligner.of(tok, teacher, _LEN.value)
    if not aligner.teacher_len:
        aligner.teacher_len = alignment.teacher_len(config.data.seq_len,
                                                    *aligner.bytes_per_token(alignment.first_rows(batches, 64)))
    aligner.align(batches.numpy(0))  # (warm: the tables are built, the pages read)
    read, aligned, truncated, chunks, inside, targets = [], [], 0, 0, 0, 0
    for step in range(1, _STEPS.value + 1):
        t0 = time.perf_counter()
        rows = batches.numpy(step)
        read.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = aligner.align(batches.numpy(step))
        aligned.append(time.perf_counter() - t0)
        truncated += int(got.stats[:, alignment.TRUNCATED].sum())
        chunks += int((got.student_chunks.max(axis=1) + 1).sum())
        inside += int((got.student_chunks >= 0).sum())
        targets += rows[:, 1:].size
    print(f"student {tok.fingerprint()} ({tok.vocab_size} ids) | teacher {teacher.fingerprint()} ({_TYPE.value}, "
          f"{teacher.vocab_size} ids) | batch {config.data.batch_size} x {config.data.seq_len + 1} ids | teacher "
          f"{aligner.teacher_len} tokens per window | {_STEPS.value} steps")
    print(f"read rows: {statistics.median(read) * 1e3:.2f} ms/step | read and align: "
          f"{statistics.median(aligned) * 1e3:.2f} ms/step | truncated chunks {truncated} of {truncated + chunks} "
          f"({100 * truncated / max(truncated + chunks, 1):.2f}%) | targets in aligned chunks "
          f"{100 * inside / max(targets, 1):.1f}%")


if __name__ == "__main__":
    app.run(main)
