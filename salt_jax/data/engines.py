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
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
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
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=init[0], initargs=init[1])

        def wait(futures):
            finished, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
            return [(f, f.result()) for f in finished]

        try:
            run_bounded(jobs, lambda fn, args: pool.submit(fn, *args), wait, 2 * self.workers, done)
        finally:
            pool.shutdown(cancel_futures=True)
