"""Command line for one training run.

    python -m salt_jax.main --config=configs/demo.py --workdir=runs/demo [--config.a.b=v ...]

Re-running the same command on the same workdir resumes from the latest
checkpoint. Mistakes a user can fix exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from salt_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str) -> None:
    """Prints one line on stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _main(argv) -> None:
    del argv
    setup_logging()
    if _CONFIG.value is None:
        fail("--config is required, e.g. --config=configs/demo.py")
    if not _WORKDIR.value:
        fail("--workdir is required: the directory for checkpoints and metrics")
    from salt_jax import train

    try:
        summary = train.run(_CONFIG.value, _WORKDIR.value)
    except UserError as e:
        fail(str(e))
    logging.info("done: final held-out loss %.4f, accuracy %.4f", summary["final_eval_loss"],
                 summary["final_eval_accuracy"])


def main() -> None:
    try:
        app.run(_main)
    except UserError as e:  # raised while the config file itself was being loaded
        fail(str(e))


if __name__ == "__main__":
    main()
