"""Builds the token store (and the tokenizer) a run config trains on, ahead of training.

    python -m salt_jax.prepare --config=configs/demo.py [--config.data.*] [--workers=N]

It builds exactly the store `python -m salt_jax.main` with the same config
would build on demand (same source, tokenizer and key, so the run then just
opens it), tokenizing shards in N processes. Re-running after an interruption
keeps the finished shards. Prints one line per split and the store's path.
"""

from __future__ import annotations

import logging
import os

from absl import app, flags
from ml_collections import config_flags

from salt_jax.cli import fail, load_config, parse_flags, setup_logging
from salt_jax.config import validate
from salt_jax.data import store
from salt_jax.errors import UserError
from salt_jax.kd.teacher import adopt_teacher_vocabulary

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).", lock_config=True)
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1,
                                "Tokenizer processes, one thread each (0 = in this process, with the tokenizer's "
                                "own threads).")


def prepare(config, workers: int) -> store.TokenCache:
    """The run's token store, built with `workers` processes if it is missing."""
    validate(config)
    adopt_teacher_vocabulary(config)  # a Hugging Face teacher's tokenizer, as the run would use it
    cache, _ = store.build_cache(config.data, workers=workers)
    return cache


def _main(argv) -> None:
    del argv
    setup_logging()
    config = load_config(_CONFIG)
    if _WORKERS.value < 0:
        fail(f"--workers={_WORKERS.value}: must be 0 (this process) or more")
    try:
        cache = prepare(config, _WORKERS.value)
    except UserError as e:
        fail(str(e))
    for split in ("train", "heldout"):
        info = cache.meta["splits"][split]
        logging.info("%s: %d documents, %d tokens, %d shards", split, info["documents"], info["tokens"],
                     len(info["shards"]))
    print(f"token store: {cache.directory}", flush=True)


def main() -> None:
    app.run(_main, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
