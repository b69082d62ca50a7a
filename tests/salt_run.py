"""One small SALT run through the CLI, shared by the fault drills and the multi-process test.

KD for steps 1-7 (test-tiny student, test-tiny-teacher), then plain training to step 12;
checkpoints every 3 steps.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from conftest import REPO

RUN = {"data.seq_len": 32, "data.max_files": 60, "data.heldout_batches": 2, "train.steps": 12,
       "train.log_every": 4, "train.heldout_every": 6, "train.checkpoint_every": 3, "train.keep_checkpoints": 10,
       "train.progress": False, "optim.warmup_steps": 2, "salt.kd_steps": 7}


def args(workdir, teacher_dir, extra=()) -> list[str]:
    a = [sys.executable, "-m", "salt_jax.main", f"--config={os.path.join(REPO, 'configs', 'test_tiny.py')}:salt",
         f"--workdir={workdir}", f"--config.salt.teacher={teacher_dir}"]
    return a + [f"--config.{k}={v}" for k, v in RUN.items()] + list(extra)


def cli(workdir, cache_dir, teacher_dir, extra=(), wait=True, env=None, stderr=subprocess.STDOUT):
    """Runs the CLI on RUN (+ extra flags): the finished process, or the Popen when wait=False (stderr
    merged into stdout unless `stderr` says otherwise)."""
    env = dict(os.environ if env is None else env, SALT_JAX_CACHE=cache_dir)
    if wait:
        return subprocess.run(args(workdir, teacher_dir, extra), cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
    return subprocess.Popen(args(workdir, teacher_dir, extra), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)


FOUR_DEVICES = "--xla_force_host_platform_device_count=4"  # per process of a two-process run


def two_processes(workdir, cache_dir, teacher_dir, extra=()) -> list[str]:
    """Runs RUN (+ extra flags) as two processes on localhost (4 devices each, JAX's distributed runtime) and
    returns their outputs, both asserted to have exited 0."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS=FOUR_DEVICES)
    procs = [cli(workdir, cache_dir, teacher_dir, list(extra) + [f"--coordinator_address=localhost:{port}",
                                                              "--num_processes=2", f"--process_id={i}"],
                 wait=False, env=env) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    return outs


def params(workdir, step=None):
    """The parameters of a run's checkpoint (default: the latest), as host arrays."""
    root = os.path.join(workdir, "checkpoints")
    step = step if step is not None else max(int(d) for d in os.listdir(root) if d.isdigit())
    path = os.path.join(root, str(step), "state")
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # whatever topology wrote it
    with ocp.StandardCheckpointer() as ck:
        meta = ck.metadata(path).item_metadata
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device), meta)
        return jax.device_get(ck.restore(path, target)["params"])


def same_params(a, b) -> None:
    jax.tree.map(np.testing.assert_array_equal, a, b)
