"""Where the token store's tasks run: an engine dispatches them, the store says what they are.

The store hands an engine a stream of jobs `(key, fn, args)` (one per shard:
the work function and its picklable arguments), a callback `done(key, result)`
and the workers' initializer `(init_fn, init_args)` (which gives each worker
process its tokenizer and source once). An engine runs each job as
`fn(*args)` in a worker that has run `init_fn(*init_args)`, keeps at most
2 x workers jobs in flight (so memory does not grow with the corpus) and
calls `done` on this process as each finishes, in any order. It knows nothing
about tasks, shards or sources, so new kinds of task need no engine change.

    LocalEngine(workers)   `workers` spawned processes on this machine (0: in this process)
    RayEngine(workers)     Ray tasks of one CPU each, on a local Ray or a cluster (ray_engine.py)

A local worker ends with the process that started it, even when that one is
killed with kill -9 (`_die_with_parent`), and ignores Ctrl-C: on Ctrl-C or an
error the engine kills its workers at once instead of waiting for their tasks
(a shard is written whole or not at all, so a killed task costs only its work).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator

Job = tuple[Any, Callable, tuple]  # (key, fn, args): fn(*args) in a worker, done(key, result) here
Init = tuple[Callable, tuple]  # (init_fn, init_args): run once in each worker process before its first job


def run_bounded(jobs: Iterator[Job], submit: Callable[[Callable, tuple], Any],
                wait: Callable[[list], Iterable[tuple[Any, Any]]], limit: int, done: Callable,
                cancel: Callable[[list], None] = lambda handles: None) -> None:
    """Submits `jobs` (submit(fn, args) -> handle), never more than `limit` unfinished; `wait(handles)` blocks
    until at least one finishes and returns (handle, result) of the finished ones, each passed to done(key,
    result). An exception from a job (or Ctrl-C) propagates after cancel(unfinished handles)."""
    pending: dict = {}

    def collect() -> None:
        for handle, result in wait(list(pending)):
            done(pending.pop(handle), result)

    try:
        for key, fn, args in jobs:
            pending[submit(fn, args)] = key
            while len(pending) >= limit:
                collect()
        while pending:
            collect()
    finally:
        if pending:
            cancel(list(pending))


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent: int, every_s: float = 1.0) -> None:
    """Ends this worker process when `parent` does. A parent killed with kill -9 cannot stop its pool, and its
    workers would go on writing into `<store>.partial/` (racing the next build there) and then block for good on
    a result queue nobody reads. On Linux the kernel kills the worker with its parent (prctl PR_SET_PDEATHSIG:
    when the thread that started the worker ends, which is the build's main thread); a daemon thread that polls
    os.getppid() covers other systems and the moment before prctl took effect."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no libc prctl: the thread below still ends the worker
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)  # (an orphan is adopted by init or a subreaper: its parent id changes)

    threading.Thread(target=watch, daemon=True, name="salt_jax-parent-watch").start()


def _start_worker(parent: int, init_fn: Callable, init_args: tuple) -> None:
    """A local worker's initializer: it ends with `parent`, leaves Ctrl-C to it (the parent stops the pool: a
    worker interrupted between tasks would print a traceback), then runs the engine's initializer."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    init_fn(*init_args)


def _kill_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Ends a pool's worker processes now, without waiting for their running tasks (Ctrl-C, an error)."""
    kill = getattr(pool, "kill_workers", None)  # Python 3.14+
    if kill is not None:
        kill()
    else:
        for process in list((getattr(pool, "_processes", None) or {}).values()):  # (before 3.14: no public way)
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


class LocalEngine:
    """`workers` single-threaded processes on this machine, or this process for 0. Spawned, not forked: the
    parent may hold JAX's threads, which fork would copy half-initialised."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = int(workers)

    def run(self, jobs: Iterator[Job], done: Callable, init: Init) -> None:
        if self.workers <= 0:
            for key, fn, args in jobs:
                done(key, fn(*args))
            return
        pool = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
            initargs=(os.getpid(), *init))

        def wait(futures):
            finished, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
            return [(f, f.result()) for f in finished]

        try:
            run_bounded(jobs, lambda fn, args: pool.submit(fn, *args), wait, 2 * self.workers, done)
        except BaseException:
            _kill_workers(pool)
            raise
        pool.shutdown()
