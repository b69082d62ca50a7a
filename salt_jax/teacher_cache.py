"""Builds a run's teacher cache ahead of training (config.salt.teacher_logits=cache; salt_jax.kd.teacher_cache).

    python -m salt_jax.teacher_cache --config=configs/demo.py:salt-cached [--config.salt.cache_k=32]
        [--config.salt.cache_targets=topk|topk_other|sampled] [--config.salt.cache_dtype=float16]
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=P]

It writes exactly the cache `python -m salt_jax.main` with the same config
would build on demand: the teacher's top-k (or sampled) ids and log-probs for
every position of every KD-phase batch, beside the token store. Runs that share
the token store, data seed, batch size, sequence length, teacher and cache
settings share it (other students, learning rates, KD weights). Re-running
after an interruption resumes at the first missing step; on several hosts
each writes its own rows. Prints the cache's directory and its size per token.
"""

from __future__ import annotations

import logging

from absl import app
from ml_collections import config_flags

from salt_jax import distributed
from salt_jax.cli import fail, flags_parser, keep_jax_off_an_absent_tpu, load_config, own_flags_help, setup_logging
from salt_jax.config import check_vocab, resolved, run_help, validate
from salt_jax.data import store
from salt_jax.errors import UserError
from salt_jax.kd import schedules, teacher_cache
from salt_jax.model import sharding

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).", lock_config=True)


def build(config) -> dict:
    """Builds (or completes) the cache the run `config` trains from; returns its manifest and directory."""
    validate(config)
    if config.salt.teacher_logits != "cache":
        raise UserError(f"config.salt.teacher_logits={config.salt.teacher_logits!r}: set it to 'cache' (the run "
                        "this cache is for reads it only then)")
    config = resolved(config)
    cache, tok = store.build_store(config.data)
    check_vocab(config, tok.vocab_size)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch(config.data.batch_size, mesh)
    steps = schedules.scheduled_end(config.salt, config.train.steps, config.data.batch_size)
    if steps == 0:
        raise UserError(f"config.salt.kd_steps={config.salt.kd_steps}: the KD phase has no steps, so there is "
                        "nothing to cache")
    manifest, directory, _, _ = teacher_cache.build_teacher_cache(config, cache, tok, mesh, steps)
    return dict(manifest, directory=directory)


def _main(argv) -> None:
    del argv
    keep_jax_off_an_absent_tpu()
    setup_logging()
    config = load_config(_CONFIG)
    try:
        distributed.initialize()
        manifest = build(config)
    except UserError as e:
        fail(str(e))
    logging.info("teacher cache: %d KD steps, %s k=%d, %.0f bytes per token", manifest["steps"],
                 manifest["kind"], manifest["k"], manifest["bytes_per_token"])
    print(f"teacher cache: {manifest['directory']}", flush=True)


def main() -> None:
    app.run(_main, flags_parser=flags_parser(lambda: run_help(__doc__, own_flags_help()), "salt-teacher-cache"))


if __name__ == "__main__":
    main()
