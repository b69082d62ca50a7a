"""Run configs shared by configs/*.py and the experiment configs (config files cannot import each other).

Each returns a full run config for a method variant (see `salt_jax.config.set_method`).
"""

from __future__ import annotations

import ml_collections

from salt_jax.config import base_config, set_method
from salt_jax.kd import methods


def _teacher(c: ml_collections.ConfigDict, method: str, path: str) -> None:
    """Names the default teacher `path` only for variants that use a teacher: a teacher run (or a baseline)
    carries no teacher path, so its own workdir may be the students' default teacher."""
    c.salt.teacher = path if methods.variant(method).teacher else ""


def tiny_run(method: str = "baseline") -> ml_collections.ConfigDict:
    """Byte tokenizer, test-tiny models, a few dozen steps: seconds on CPU."""
    c = base_config("test-tiny-teacher" if method == "teacher" else "test-tiny")
    c.data.tokenizer.kind = "bytes"
    c.data.seq_len = 64
    c.data.batch_size = 8
    c.data.max_files = 120  # a slice of the standard library keeps the token cache quick to build
    c.data.heldout_fraction = 0.1
    c.data.heldout_batches = 4
    c.train.steps = 40
    c.train.log_every = 5
    c.train.heldout_every = 20
    c.train.checkpoint_every = 20
    c.optim.warmup_steps = 5
    _teacher(c, method, "runs/test-tiny-teacher")
    return set_method(c, method)


def demo_run(method: str = "baseline") -> ml_collections.ConfigDict:
    """The CPU demo on the whole standard library, in the paper's regime: demo-teacher-half (0.82M, 0.55x the
    student's parameters) trained on as many tokens as the student's run, and demo-student (1.50M)."""
    c = base_config("demo-teacher-half" if method == "teacher" else "demo-student")
    c.data.tokenizer.kind = "sentencepiece"
    c.data.tokenizer.vocab_size = 2048  # equals both presets' vocab_size
    c.data.seq_len = 128
    c.data.batch_size = 16
    c.data.heldout_batches = 16
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 50
    c.train.steps = 500  # the teacher trains on as many tokens as a student's whole run (a finished small model)
    c.train.log_every = 20
    c.train.heldout_every = 50
    c.train.checkpoint_every = 100
    _teacher(c, method, "runs/demo-teacher")
    return set_method(c, method)


def repro_run(method: str = "baseline") -> ml_collections.ConfigDict:
    """The repro experiment's runs: repro-teacher (~0.2M) and repro-student (~0.8M), 300 short steps."""
    c = demo_run(method)
    preset = "repro-teacher" if method == "teacher" else "repro-student"
    c.model = base_config(preset).model
    c.data.batch_size = 8
    c.data.heldout_batches = 8
    c.train.steps = 400 if method == "teacher" else 300
    c.train.heldout_every = 25
    c.train.checkpoint_every = 100
    c.optim.warmup_steps = 30
    return c


def gpu_small_run(method: str = "baseline") -> ml_collections.ConfigDict:
    """One accelerator, in the paper's regime: a gpu-50m teacher (0.49x the gpu-100m student's parameters,
    0.43x without embeddings) trained as many steps as the student, 32K SentencePiece vocabulary, bf16."""
    c = base_config("gpu-50m" if method == "teacher" else "gpu-100m")
    c.model.dtype = "bfloat16"
    c.data.tokenizer.kind = "sentencepiece"
    c.data.tokenizer.vocab_size = 32000
    c.data.tokenizer.max_train_lines = 400_000
    c.data.seq_len = 512
    c.data.batch_size = 64
    c.data.heldout_batches = 16
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 200
    c.train.steps = 4000  # teacher and students alike (configs/experiments/gpu_small.py: the time arithmetic)
    c.train.log_every = 50
    c.train.heldout_every = 250
    c.train.checkpoint_every = 1000
    c.train.loss = "chunked"  # 32K vocabulary: the logits dominate (docs/performance.md); every method uses it
    c.salt.teacher_dtype = "bfloat16"
    _teacher(c, method, "runs/gpu_small/teacher")
    return set_method(c, method)


# The paper's model pairs: student preset -> teacher preset (configs/paper/).
PAPER_PAIRS = {"paper-2.8b": "paper-1.5b", "paper-8.6b": "paper-2.8b"}


def paper_run(method: str = "baseline", student: str = "paper-2.8b") -> ml_collections.ConfigDict:
    """The paper's runs at its scale (configs/paper/): sequence 2048, 208K steps, n_KD 36K, bf16, on TPU pods.

    Global batch 256 x 2048 = 0.5M tokens (the paper's batch is not in what we could read): 208K steps
    are then 109B tokens, ~39 tokens per parameter for the 2.8B student (above the ~20 of compute-optimal
    training) and 4 sequences per chip on a v5p-128. `method="teacher"` is the pair's teacher run.
    Data: a JSONL corpus (the paper used The Pile); set --config.data.path.
    """
    teacher = PAPER_PAIRS[student]
    c = base_config(teacher if method == "teacher" else student)
    c.model.dtype = "bfloat16"  # compute in bf16, parameters and AdamW state in float32
    c.model.remat = "full"  # recompute each block in the backward pass (salt_jax.compile --search tries others)
    c.data.source = "text"
    c.data.tokenizer.kind = "sentencepiece"
    c.data.tokenizer.vocab_size = 32000  # equals the presets' vocab_size
    c.data.tokenizer.max_train_lines = 2_000_000
    c.data.seq_len = 2048
    c.data.batch_size = 256
    c.data.heldout_batches = 50
    c.data.shard_chars = 256_000_000  # ~60M tokens per shard and worker task
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1  # parameters and batch over every chip
    c.optim.learning_rate = 2e-4  # GPT-3's 2.7B used 1.6e-4 at 1M tokens per step
    c.optim.warmup_steps = 2000
    c.optim.final_lr_fraction = 0.1
    c.train.steps = 208_000
    c.train.loss = "chunked"  # 32K vocabulary x 2048 positions: never hold the full logits
    c.train.loss_chunk = 256
    c.train.log_every = 100
    c.train.heldout_every = 2000
    c.train.checkpoint_every = 2000
    c.train.keep_checkpoints = 3
    c.salt.kd_steps = 36_000  # the paper's n_KD
    c.salt.teacher_dtype = "bfloat16"
    c.salt.teacher_preset = teacher
    _teacher(c, method, f"runs/paper/{teacher}-teacher")
    return set_method(c, method)
