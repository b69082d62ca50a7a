"""Command line for one training run.

    python -m salt_jax.main --config=configs/demo.py --workdir=runs/demo [--config.a.b=v ...]

Re-running the same command on the same workdir resumes from the latest
checkpoint. Mistakes a user can fix exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from salt_jax.cli import fail, load_config, parse_flags, setup_logging
from salt_jax.errors import UserError
from salt_jax.train import distributed, loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")


def _main(argv) -> None:
    del argv
    setup_logging()
    config = load_config(_CONFIG)
    if not _WORKDIR.value:
        fail("--workdir is required: the directory for checkpoints and metrics")
    try:
        distributed.initialize()
        summary = loop.run(config, _WORKDIR.value)
    except UserError as e:
        fail(str(e))
    if summary.get("preempted"):
        return  # exit 0: the checkpoint at the step reached is written; the same command resumes
    logging.info("done: final held-out loss %.4f, accuracy %.4f", summary["final_eval_loss"],
                 summary["final_eval_accuracy"])


def main() -> None:
    app.run(_main, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
