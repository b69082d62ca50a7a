"""Shared command-line plumbing: logging setup and one-line errors for user mistakes.

Entry points (salt_jax.main, salt_jax.experiment.pipeline) define their own flags and
use these helpers so every user-fixable error exits with status 2 and one line.
"""

from __future__ import annotations

import logging
import sys

from absl import flags

from salt_jax.errors import UserError


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


def load_config(config_flag):
    """The parsed --config, or exit with one line naming the problem."""
    try:
        config = config_flag.value
        if config is not None:
            config.keys()  # a config file that failed to load raises here
    except UserError as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001 -- the config file failed to load or run
        fail(f"--config: {_first_line(e)}")
    if config is None:
        fail("--config is required, e.g. --config=configs/demo.py")
    return config
