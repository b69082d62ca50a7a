"""Test-sized runs: byte tokenizer, test-tiny models, a few dozen steps (seconds on CPU).

    --config=configs/test_tiny.py[:METHOD]   METHOD as in configs/demo.py (default baseline);
                                             the teacher is test-tiny-teacher.
"""

from salt_jax.recipes import tiny_run


def get_config(method: str = "baseline"):
    return tiny_run(method)
