"""Test setup: 8 emulated CPU devices (set before jax is imported) and shared fixtures."""

import os
import subprocess
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the session (this process and every command-line run it starts): most
# tests compile the same test-tiny programs, and a cached executable is the same code, so the numbers
# are too. A fresh directory per session keeps runs independent.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="salt_jax_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

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
    from salt_jax.recipes import tiny_run

    c = tiny_run("baseline")
    c.data.cache_dir = cache_dir
    c.data.seq_len = 32
    c.data.max_files = 60
    c.data.heldout_batches = 2
    c.train.steps = 12
    c.train.log_every = 4
    c.train.heldout_every = 6
    c.train.checkpoint_every = 6
    c.train.progress = False
    c.optim.warmup_steps = 2
    return c


# The run the error catalogue's rows start from (tests/test_errors.py, tests/test_error_hints.py).
ERRORS_TINY = [f"--config={os.path.join(REPO, 'configs', 'test_tiny.py')}", "--config.train.steps=6",
               "--config.train.heldout_every=6", "--config.train.checkpoint_every=6", "--config.data.max_files=60",
               "--config.data.seq_len=32", "--config.data.heldout_batches=2"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, cache_dir):
    """A finished ERRORS_TINY run, through the command line (trained once, copied by the rows that resume or
    damage one)."""
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    first = subprocess.run([sys.executable, "-m", "salt_jax.main", *ERRORS_TINY, f"--workdir={workdir}"], cwd=REPO,
                           env=dict(os.environ, SALT_JAX_CACHE=cache_dir), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    return workdir


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, cache_dir):
    """A trained test-tiny-teacher run (20 steps), shared by every SALT test."""
    from salt_jax.train import loop
    from salt_jax.config import base_config, set_method

    c = base_config("test-tiny-teacher")
    c.data.cache_dir, c.data.seq_len, c.data.batch_size, c.data.max_files = cache_dir, 32, 8, 60
    c.data.heldout_fraction, c.data.heldout_batches = 0.1, 2
    c.train.steps, c.train.heldout_every, c.train.checkpoint_every, c.train.progress = 20, 20, 20, False
    set_method(c, "teacher")
    workdir = str(tmp_path_factory.mktemp("teacher"))
    loop.run(c, workdir)
    return workdir


@pytest.fixture(scope="session")
def salt_reference(tmp_path_factory, teacher_dir, cache_dir):
    """The uninterrupted salt_run.RUN through the CLI in one process with 8 devices: what fault drills
    and the multi-process run must reproduce."""
    import salt_run

    workdir = str(tmp_path_factory.mktemp("reference"))
    out = salt_run.cli(workdir, cache_dir, teacher_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir
