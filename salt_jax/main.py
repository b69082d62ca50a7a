"""Command line for one training run.

    python -m salt_jax.main --config=configs/demo.py:salt --workdir=runs/demo-salt [--config.train.steps=2000 ...]

Re-running the same command on the same workdir resumes from the latest
checkpoint. Mistakes a user can fix exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from salt_jax.cli import (fail, flags_parser, interrupted, keep_jax_off_an_absent_tpu, load_config, own_flags_help,
                          setup_logging)
from salt_jax.config import run_help
from salt_jax.errors import INTERRUPTED_STATUS, UserError
from salt_jax import distributed
from salt_jax.train import faults, loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")


def _main(argv) -> None:
    del argv
    keep_jax_off_an_absent_tpu()
    setup_logging()
    config = load_config(_CONFIG)
    if not _WORKDIR.value:
        fail("--workdir is required: the directory for checkpoints and metrics")
    try:
        distributed.initialize()
        summary = loop.run(config, _WORKDIR.value)
    except UserError as e:
        fail(str(e))
    except faults.Preempted as e:  # the checkpoint at the step reached is written; the same command resumes
        logging.info("%s", e)
        if isinstance(e, faults.Interrupted):
            sys.exit(INTERRUPTED_STATUS)
        return  # a preemption notice (SIGTERM): exit 0
    except KeyboardInterrupt:
        interrupted("Ctrl-C before training started; every saved checkpoint is kept, and the same command "
                    "resumes")
    logging.info("done: final held-out loss %.4f, accuracy %.4f", summary["final_eval_loss"],
                 summary["final_eval_accuracy"])


def main() -> None:
    app.run(_main, flags_parser=flags_parser(lambda: run_help(__doc__, own_flags_help()), "salt-train"))


if __name__ == "__main__":
    main()
