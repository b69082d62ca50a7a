"""Test-sized baseline run: byte tokenizer, test-tiny model, a few dozen steps (seconds on CPU)."""

from salt_jax.config import base_config


def get_config():
    c = base_config("test-tiny")
    c.data.tokenizer.kind = "bytes"
    c.data.seq_len = 64
    c.data.batch_size = 8
    c.data.max_files = 120  # a slice of the standard library keeps the token cache quick to build
    c.data.heldout_fraction = 0.1
    c.data.eval_batches = 4
    c.train.steps = 40
    c.train.log_every = 5
    c.train.eval_every = 20
    c.train.checkpoint_every = 20
    c.optim.warmup_steps = 5
    return c
