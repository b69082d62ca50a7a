"""Test setup: 8 emulated CPU devices (set before jax is imported) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One token/tokenizer cache for the whole session (built on first use)."""
    path = str(tmp_path_factory.mktemp("salt_cache"))
    os.environ["SALT_JAX_CACHE"] = path
    return path


@pytest.fixture
def tiny_config(cache_dir):
    """The test-tiny run config (configs/test_tiny.py) made smaller still, with the shared cache."""
    from salt_jax.recipes import test_tiny_run

    c = test_tiny_run("baseline")
    c.data.cache_dir = cache_dir
    c.data.seq_len = 32
    c.data.max_files = 60
    c.data.eval_batches = 2
    c.train.steps = 12
    c.train.log_every = 4
    c.train.eval_every = 6
    c.train.checkpoint_every = 6
    c.train.progress = False
    c.optim.warmup_steps = 2
    return c
