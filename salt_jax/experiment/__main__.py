"""The comparison experiment from the command line.

    python -m salt_jax.experiment --config=configs/experiments/demo.py --workdir=runs/demo
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from salt_jax import paths
from salt_jax.cli import fail, flags_parser, interrupted, load_config, own_flags_help, setup_logging
from salt_jax.errors import INTERRUPTED_STATUS, UserError
from salt_jax.experiment.pipeline import run_experiment
from salt_jax import distributed
from salt_jax.train import faults

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/experiments/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all runs and the report.")


def _main(argv) -> None:
    del argv
    setup_logging()
    exp = load_config(_CONFIG)
    if not _WORKDIR.value:
        fail("--workdir is required: the directory for the experiment's runs and report")
    try:
        distributed.initialize()
        results = run_experiment(exp, _WORKDIR.value)
    except UserError as e:
        fail(str(e))
    except faults.Preempted as e:  # every finished run and the stopped run's checkpoint are kept
        logging.info("%s", e)
        if isinstance(e, faults.Interrupted):
            sys.exit(INTERRUPTED_STATUS)
        return  # a preemption notice: exit 0
    except KeyboardInterrupt:
        interrupted("Ctrl-C outside a training run; every finished run and checkpoint is kept, and the same "
                    "command resumes")
    logging.info("%s", results["conclusion"])
    print(f"report: {paths.join(paths.expand(_WORKDIR.value), 'report.md')}", file=sys.stdout, flush=True)


def main() -> None:
    app.run(_main, flags_parser=flags_parser(
        lambda: "\n".join([(__doc__ or "").strip(), "", "flags:", *own_flags_help()])))


if __name__ == "__main__":
    main()
