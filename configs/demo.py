"""CPU demo: a baseline run of the demo-student model on the standard library (minutes on 2 cores)."""

from salt_jax.config import base_config


def get_config():
    c = base_config("demo-student")
    c.data.tokenizer.kind = "sentencepiece"
    c.data.tokenizer.vocab_size = 2048  # equals the preset's vocab_size
    c.data.seq_len = 128
    c.data.batch_size = 16
    c.data.eval_batches = 16
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 50
    c.train.steps = 600
    c.train.log_every = 20
    c.train.eval_every = 100
    c.train.checkpoint_every = 200
    return c
