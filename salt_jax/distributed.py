"""Joining JAX's distributed runtime before anything touches a device.

Every process of a multi-host run calls `initialize` first. Where the
arguments come from, first match wins:
    1. the command-line flags --coordinator_address / --num_processes / --process_id;
    2. the environment: SALT_JAX_COORDINATOR, SALT_JAX_NUM_PROCESSES, SALT_JAX_PROCESS_ID;
    3. a cluster JAX detects by itself: a multi-host Cloud TPU slice
       (TPU_WORKER_HOSTNAMES lists several workers) or a SLURM job with several
       tasks (SLURM_NTASKS > 1): `jax.distributed.initialize()` with no arguments;
    4. otherwise a single process: nothing to do.
On CPU the cross-process collectives are Gloo's (the tests run 2 processes on
localhost this way).
"""

from __future__ import annotations

import logging
import os

import jax
from absl import flags

from salt_jax.errors import UserError

_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "Multi-process runs: host:port of process 0's coordinator service.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's id, 0..num_processes-1.")


def _auto_cluster(env) -> bool:
    """Whether the environment is a multi-host cluster JAX can join without arguments."""
    tpu_workers = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return len(tpu_workers) > 1 or int(env.get("SLURM_NTASKS", "1") or 1) > 1


def resolve(coordinator=None, num_processes=None, process_id=None, env=None) -> dict | None:
    """The jax.distributed.initialize arguments ({} = auto-detect), or None for a single process."""
    env = os.environ if env is None else env
    coordinator = coordinator or env.get("SALT_JAX_COORDINATOR")
    if num_processes is None and env.get("SALT_JAX_NUM_PROCESSES"):
        num_processes = int(env["SALT_JAX_NUM_PROCESSES"])
    if process_id is None and env.get("SALT_JAX_PROCESS_ID"):
        process_id = int(env["SALT_JAX_PROCESS_ID"])
    given = [x is not None for x in (coordinator, num_processes, process_id)]
    if any(given):
        if not all(given):
            raise UserError("--coordinator_address, --num_processes and --process_id (or SALT_JAX_COORDINATOR, "
                            "SALT_JAX_NUM_PROCESSES, SALT_JAX_PROCESS_ID) go together; give all three")
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process_id={process_id}: must be in [0, --num_processes={num_processes})")
        return {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
    return {} if _auto_cluster(env) else None


def initialize() -> None:
    """Joins the distributed runtime when the flags or the environment ask for it (see module doc)."""
    args = resolve(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if args is None:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used by the CPU backend
    try:
        jax.distributed.initialize(**args)
    except Exception as e:  # noqa: BLE001 -- connection and argument errors come in several types
        where = args.get("coordinator_address") or "the auto-detected cluster"
        raise UserError(f"cannot join the distributed runtime at {where} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}); check --coordinator_address and "
                        "that every process was started") from None
    logging.info("process %d of %d; %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
