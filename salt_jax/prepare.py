"""Builds the token store (and the tokenizer) a run config trains on, ahead of training.

    python -m salt_jax.prepare --config=configs/demo.py [--config.data.*] [--workers=N]
        [--process_index=P --process_count=H] [--engine=ray [--ray_address=HOST:PORT]]

It builds exactly the store `python -m salt_jax.main` with the same config
would build on demand (same source, tokenizer and key, so the run then just
opens it), tokenizing shards in N processes; with config.data.mixture, the
mixture's tokenizer and one store per corpus. Re-running after an interruption
keeps the finished shards (Ctrl-C stops the workers at once: one line, exit
status 130). Prints one line per split and the store's path.

--engine=ray runs the same tasks as Ray tasks instead (pip install -e ".[ray]"):
on a local Ray started for the command, or on the cluster at --ray_address,
N at a time (default: every CPU of the cluster). It writes the same store,
byte for byte; on a cluster of several machines the store must be on storage
they all see (gs://, s3://, or a mount with config.data.shared_cache=true).

A store in a shared cache_dir (gs://, s3://, or config.data.shared_cache=true)
can be built by H machines at once: start the same command on each with its
--process_index (e.g. from a job array's task id); machine P tokenizes shards
P, P + H, ... and machine 0 completes the store.
"""

from __future__ import annotations

import logging
import os

from absl import app, flags
from ml_collections import config_flags

from salt_jax.cli import (fail, flags_parser, interrupted, keep_jax_off_an_absent_tpu, load_config, own_flags_help,
                          setup_logging)
from salt_jax.config import resolved, run_help, validate
from salt_jax.data import store
from salt_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).", lock_config=True)
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1,
                                "Tokenizer processes, one thread each (0 = in this process, with the tokenizer's "
                                "own threads). With --engine=ray: Ray tasks at a time (default: the cluster's CPUs).")
_ENGINE = flags.DEFINE_enum("engine", "local", ["local", "ray"], "Where the tokenizer tasks run: local = --workers "
                            "processes on this machine; ray = Ray tasks (pip install -e \".[ray]\").")
_RAY_ADDRESS = flags.DEFINE_string("ray_address", "", "With --engine=ray: the Ray cluster to run on (HOST:PORT of its "
                                   "head, as `ray start --head` prints, or 'auto'); empty = a local Ray.")
_INDEX = flags.DEFINE_integer("process_index", 0, "This machine's index among --process_count machines building "
                              "one shared store together.")
_COUNT = flags.DEFINE_integer("process_count", 1, "Machines building one shared store together (each runs this "
                              "command with its --process_index).")


def prepare(config, workers: int, host: tuple[int, int] = (0, 1), engine=None) -> store.TokenStore:
    """The run's token store, built with `workers` processes (or by `engine`, engines.py) if it is missing
    (this machine's part of it, `host` = (index, count), when several machines build a shared store)."""
    validate(config)
    config = resolved(config)  # (a Hugging Face teacher's tokenizer, as the run would use it)
    cache, _ = store.build_store(config.data, workers=workers, host=host, engine=engine)
    return cache


def _engine(config, cache_dir: str):
    """The --engine: None (local processes), or Ray joined or started, checked against the store's location."""
    if _ENGINE.value == "local":
        return None
    if _WORKERS.present and _WORKERS.value == 0:
        fail("--workers=0 tokenizes in this process; with --engine=ray give the Ray tasks at a time, or leave "
             "--workers out for one per CPU of the Ray cluster")
    from salt_jax.data import ray_engine  # noqa: PLC0415 -- Ray is an extra, imported only for --engine=ray

    workers = _WORKERS.value if _WORKERS.present else None  # (default: every CPU of the cluster)
    ray_engine.connect(_RAY_ADDRESS.value, num_cpus=workers)
    engine = ray_engine.RayEngine(workers)
    nodes, elsewhere = ray_engine.machines()
    if elsewhere and not store.is_shared(config.data, cache_dir):
        fail(f"--engine=ray: {elsewhere} of the Ray cluster's {nodes} machines are not this one, and a task writes "
             f"its shard where it runs; use a gs:// or s3:// config.data.cache_dir, or a file system every machine "
             f"mounts with config.data.shared_cache=true ({cache_dir})")
    logging.info("Ray: %d tasks at a time on %d machine(s)", engine.workers, nodes)
    return engine


def _main(argv) -> None:
    del argv
    keep_jax_off_an_absent_tpu()
    setup_logging()
    config = load_config(_CONFIG)
    if _WORKERS.value < 0:
        fail(f"--workers={_WORKERS.value}: must be 0 (this process) or more")
    if not 0 <= _INDEX.value < _COUNT.value:
        fail(f"--process_index={_INDEX.value}: must be in [0, --process_count={_COUNT.value})")
    cache_dir = config.data.cache_dir or store.default_cache_dir()
    if _COUNT.value > 1 and not store.is_shared(config.data, cache_dir):
        fail(f"--process_count={_COUNT.value}: the machines must share the store; use a gs:// or s3:// "
             f"config.data.cache_dir, or set config.data.shared_cache=true for a mounted file system ({cache_dir})")
    try:
        validate(config)  # (before a Ray cluster is started or joined)
        engine = _engine(config, cache_dir)
        cache = prepare(config, _WORKERS.value, (_INDEX.value, _COUNT.value), engine)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:  # (the workers are stopped already: engines.LocalEngine)
        interrupted("Ctrl-C while building the token store; its finished shards are kept, and the same command "
                    "resumes the build")
    for name, one in cache.components().items():  # (a mixture: each corpus's store)
        for split in ("train", "heldout"):
            info = one.meta["splits"][split]
            logging.info("%s%s: %d documents, %d tokens, %d shards", f"{name} " if name else "", split,
                         info["documents"], info["tokens"], len(info["shards"]))
        print(f"token store{f' ({name})' if name else ''}: {one.directory}", flush=True)


def main() -> None:
    app.run(_main, flags_parser=flags_parser(lambda: run_help(__doc__, own_flags_help()), "salt-prepare"))


if __name__ == "__main__":
    main()
