"""The Ray engine: the token store's tasks (and the experiment's runs) as Ray tasks, on this machine or a cluster.

    python -m salt_jax.prepare --config=... --engine=ray [--ray_address=HOST:PORT] [--workers=N]

`connect` starts a local Ray (no address) or joins a running cluster
(`ray start --head` printed its address; "auto" finds one started on this
machine). `RayEngine` runs the jobs of engines.py as Ray tasks of one CPU
each, at most 2 x workers submitted at a time (workers: the cluster's CPUs
unless given). The workers' initializer (the store's tokenizer and source)
goes to the object store once and runs once per worker process and build. A
task whose worker dies is retried by Ray (the store's writes are whole-or-
absent, so a retry is safe); an error a task raises is raised here as itself,
so a user's mistake is still one line.

Ray is an extra (`pip install -e ".[ray]"`), imported only here.
"""

from __future__ import annotations

import socket
import uuid
from typing import Callable, Iterator

from salt_jax.data.engines import run_bounded
from salt_jax.errors import UserError

INSTALL = 'Ray is not installed; install the extra: pip install -e ".[ray]"'


def ray_module():
    """`ray`, or one line saying how to install it."""
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise UserError(INSTALL) from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) that nothing answers on is one line at once (Ray itself retries for
    minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray_address={address}: give HOST:PORT of a Ray cluster's head (what `ray start --head` "
                        "printed), 'auto' for one started on this machine, or leave it out for a local Ray")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(f"--ray_address={address}: no Ray cluster answers there ({e.strerror or e}); start one with "
                        "`ray start --head` or leave the flag out for a local Ray") from None


def connect(address: str = "", num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Joins the Ray cluster at `address`, or starts a local Ray with `num_cpus` CPUs (all cores by default).
    Does nothing when this process is already connected (a test's session, a notebook's)."""
    ray = ray_module()
    if ray.is_initialized():
        return
    try:
        if address:
            if address != "auto":
                _check_reachable(address)
            ray.init(address=address, log_to_driver=log_to_driver)
        else:
            ray.init(num_cpus=num_cpus or None, include_dashboard=False, log_to_driver=log_to_driver)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = f"--ray_address={address}" if address else "a local Ray"
        raise UserError(f"{where}: cannot start or join Ray ({str(e).splitlines()[0][:200]})") from None


def cluster_cpus() -> int:
    return max(int(ray_module().cluster_resources().get("CPU", 1)), 1)


def machines() -> tuple[int, int]:
    """(machines in the cluster, how many of them are not this one): where a task's files end up."""
    ray = ray_module()
    here = ray.util.get_node_ip_address()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return len(alive), sum(1 for n in alive if n.get("NodeManagerAddress") != here)


def unwrapped(error: BaseException) -> BaseException:
    """The exception a Ray task raised (RayTaskError wraps it with the remote traceback)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


_READY: str | None = None  # the build whose initializer this worker process has run


def _call(build: str, init: list, fn: Callable, args: tuple):
    """One job in a Ray worker: the build's initializer first (once per worker process), then fn(*args).
    `init` is [ObjectRef] (in a list, so Ray hands the reference over instead of fetching it every time)."""
    global _READY
    if _READY != build:
        init_fn, init_args = ray_module().get(init[0])
        init_fn(*init_args)
        _READY = build
    return fn(*args)


class RayEngine:
    """Jobs as Ray tasks of one CPU each, at most 2 x workers submitted (workers: the cluster's CPUs unless
    given)."""

    name = "ray"

    def __init__(self, workers: int | None = None):
        self.workers = int(workers) if workers else cluster_cpus()

    def run(self, jobs: Iterator, done: Callable, init: tuple) -> None:
        ray = ray_module()
        remote = ray.remote(num_cpus=1)(_call)
        build, init_ref = uuid.uuid4().hex, ray.put(init)

        def wait(refs):
            finished, _ = ray.wait(refs, num_returns=1)
            try:
                return [(ref, ray.get(ref)) for ref in finished]
            except ray.exceptions.RayTaskError as e:
                raise unwrapped(e) from e  # (a user error is still one line; a bug keeps the remote traceback)

        def cancel(refs):
            # In-flight tasks are let finish (their shards are kept, and the re-run resumes past them) rather than
            # ray.cancel-led: a cancel that races a task's completion aborts the driver in Ray 2.60 ("Tried to
            # complete task that was not pending", task_manager.cc), seen under load in the test suite.
            ray.wait(list(refs), num_returns=len(refs))

        run_bounded(jobs, lambda fn, args: remote.remote(build, [init_ref], fn, args), wait, 2 * self.workers,
                    done, cancel)
