"""The comparison experiment from the command line.

    python -m salt_jax.experiment --config=configs/experiments/demo.py --workdir=runs/demo
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from salt_jax import paths
from salt_jax.cli import fail, load_config, parse_flags, setup_logging
from salt_jax.errors import UserError
from salt_jax.experiment.pipeline import run_experiment
from salt_jax.train import distributed, faults

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
    except faults.Preempted as e:
        logging.info("%s", e)
        return  # exit 0: every finished run and the interrupted run's checkpoint are kept
    logging.info("%s", results["conclusion"])
    print(f"report: {paths.join(paths.expand(_WORKDIR.value), 'report.md')}", file=sys.stdout, flush=True)


def main() -> None:
    app.run(_main, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
