"""Test-sized runs: byte tokenizer, test-tiny models, a few dozen steps (seconds on CPU).

    --config=configs/test_tiny.py[:METHOD]   METHOD as in configs/demo.py (default baseline);
                                             the teacher is test-tiny-teacher.
"""

from salt_jax.config import base_config, set_method


def get_config(method: str = "baseline"):
    c = base_config("test-tiny-teacher" if method == "teacher" else "test-tiny")
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
    c.salt.teacher = "runs/test-tiny-teacher"
    set_method(c, method)
    return c
