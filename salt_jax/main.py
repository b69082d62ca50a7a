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
    # Progress and info go to stdout; stderr is kept for warnings and the one-line error.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, force=True)
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str) -> None:
    """Prints one line on stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if "Failed loading config file" in str(e):  # ml_collections: the file is missing or raised
        return f"cannot load the config file ({lines[-1]}); pass an existing configs/<file>.py"
    return (lines[0] if lines else type(e).__name__)[:300]


def parse_flags(argv):
    """absl flag parsing that turns every command-line mistake into one error line."""
    try:
        return flags.FLAGS(argv)
    except UserError as e:
        fail(str(e))
    except (AttributeError, KeyError) as e:  # an override names a field the config does not have
        fail(f"command line: the config has no field {_first_line(e).strip(chr(34))}; check the --config.* names "
             "against the config file")
    except Exception as e:  # noqa: BLE001 -- absl/ml_collections raise several types here
        fail(f"command line: {_first_line(e)}")


def load_config():
    """The parsed --config, or exit with one line naming the problem."""
    try:
        config = _CONFIG.value
        if config is not None:
            config.keys()  # a config file that failed to load raises here
    except UserError as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001 -- the config file failed to load or run
        fail(f"--config: {_first_line(e)}")
    if config is None:
        fail("--config is required, e.g. --config=configs/demo.py")
    return config


def _main(argv) -> None:
    del argv
    setup_logging()
    config = load_config()
    if not _WORKDIR.value:
        fail("--workdir is required: the directory for checkpoints and metrics")
    from salt_jax import train

    try:
        summary = train.run(config, _WORKDIR.value)
    except UserError as e:
        fail(str(e))
    logging.info("done: final held-out loss %.4f, accuracy %.4f", summary["final_eval_loss"],
                 summary["final_eval_accuracy"])


def main() -> None:
    app.run(_main, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
