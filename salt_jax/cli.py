"""Shared command-line plumbing: logging setup, --help, and one-line errors for user mistakes.

Every command (COMMANDS below: salt_jax/main.py, salt_jax/experiment/__main__.py, ...) defines its own
absl flags and uses these helpers, so `--help` exits 0 listing its flags and every user-fixable error
(a bad flag included) exits with status 2 and one line.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import re
import sys
from typing import Callable

from absl import flags

from salt_jax import renamed
from salt_jax.errors import INTERRUPTED_STATUS, UserError


def keep_jax_off_an_absent_tpu() -> None:
    """A host with libtpu installed (the [tpu] and [test] extras) but no TPU: pin JAX to the CPU.

    Otherwise JAX tries the TPU backend first; it fails (after a page of libtpu warnings, holding
    /tmp/libtpu_lockfile) and falls back to the CPU anyway. A TPU VM (/dev/accel*, /dev/vfio), a GPU
    plugin, or an explicit JAX_PLATFORMS is left alone. Every entry point calls it first (importing
    salt_jax changes nothing); a notebook on such a host may call it before its first computation.
    Compiling for TPU slices (salt_jax.compile) needs only libtpu, not the TPU backend.
    """
    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return
    if any(importlib.util.find_spec(p) is not None for p in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                              "jax_rocm7_plugin")):
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # (imported already, so it read the environment before this)
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def setup_logging() -> None:
    """Progress and info lines on stdout; warnings and errors on stderr (as `warning: ...`), where the
    one-line error of a user mistake also goes."""
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    out.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("%(asctime)s %(levelname_lower)s: %(message)s", datefmt="%H:%M:%S"))
    err.addFilter(_lower_level_name)
    logging.basicConfig(level=logging.INFO, handlers=[out, err], force=True)
    for noisy in ("absl", "orbax", "jax._src", "datasets"):  # (datasets: "TensorFlow version ... available")
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _lower_level_name(record: logging.LogRecord) -> bool:
    record.levelname_lower = record.levelname.lower()
    return True


def fail(message: str) -> None:
    """Prints one line on stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def interrupted(what: str) -> None:
    """Ctrl-C outside the training loop (which checkpoints first): one line on stderr, exit status 130."""
    print(f"interrupted: {what}", file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED_STATUS)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if "Failed loading config file" in str(e):  # ml_collections: the file is missing or raised
        return f"cannot load the config file ({lines[-1]}); pass an existing configs/<file>.py"
    return (lines[0] if lines else type(e).__name__)[:300]


HELP_FLAGS = ("-h", "--help", "-help", "--helpfull", "--helpshort")

# The console commands setup.py installs, and the module each runs: `salt-train ARGS` is
# `python -m salt_jax.main ARGS`.
COMMANDS = {
    "salt-train": "salt_jax.main",
    "salt-experiment": "salt_jax.experiment",
    "salt-prepare": "salt_jax.prepare",
    "salt-teacher-cache": "salt_jax.teacher_cache",
    "salt-compile": "salt_jax.compile",
    "salt-eval": "salt_jax.eval",
    "salt-sample": "salt_jax.sample",
    "salt-hf": "salt_jax.hf",
    "salt-bench": "salt_jax.bench",
    "salt-presets": "salt_jax.model.presets",
}


def usage(command: str, args: str = "[flags]") -> str:
    """The --help text's first line: the console command and its `python -m` form."""
    args = f" {args}" if args else ""
    return f"usage: {command}{args}   (or: python -m {COMMANDS[command]}{args})"


def own_flags_help() -> list[str]:
    """`--name: help` of the flags salt_jax defines (not those of the libraries it imports)."""
    own = {f.name: f for module, fs in flags.FLAGS.flags_by_module_dict().items()
           if module.startswith("salt_jax") or module in ("__main__", sys.argv[0]) for f in fs}
    return [f"  --{name}: {own[name].help}" for name in sorted(own)]


def flags_parser(help_text: Callable[[], str], command: str = "", args: str = "[flags]"):
    """absl's flags_parser for app.run: `parse_flags`, with -h / --help printing usage(command, args) and
    help_text() and exiting 0."""
    def parse(argv):
        if any(a in HELP_FLAGS for a in argv[1:]):
            try:
                print(f"{usage(command, args)}\n\n{help_text()}" if command else help_text(), flush=True)
            except BrokenPipeError:  # `--help | head`: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        return parse_flags(argv, command)
    return parse


def parse_flags(argv, command: str = ""):
    """absl flag parsing that turns every command-line mistake into one error line.

    A command that takes `--config` (CONFIG_KIND) first loads the file itself, so a missing file, one without
    `get_config`, a `get_config` that raises, an unknown `:ARG` and a config meant for another command are
    each one line naming the file and what the command expects, before ml_collections applies overrides.
    """
    argv = renamed_overrides(argv)
    if command in CONFIG_KIND:
        check_config_file(argv, command)
    try:
        return flags.FLAGS(argv)
    except UserError as e:
        fail(str(e))
    except (AttributeError, KeyError) as e:  # an override names a field the config does not have
        fail(f"command line: {_no_field(e)}; check the --config.* names against the config file")
    except Exception as e:  # noqa: BLE001 -- absl/ml_collections raise several types here
        fail(f"command line: {_first_line(e)}")


def renamed_overrides(argv: list[str]) -> list[str]:
    """argv with each --config.OLD override of a renamed field (salt_jax.renamed) under its new name.

    sys.argv is rewritten the same way: ml_collections' config flag reads its overrides from sys.argv
    itself, not from the argv absl parses, so both must carry the new names.
    """
    out = []
    for arg in argv:
        arg, old = renamed.override(arg)
        if old is not None:
            logging.warning("--config.%s is now --config.%s (read as such)", old, renamed.RENAMED[old])
        out.append(arg)
    sys.argv[:] = [renamed.override(arg)[0] for arg in sys.argv]
    return out


# What each command's --config is: a run config (model, data, train, salt, ...) or an experiment config
# (a teacher run config, a student run config, the methods and seeds to compare).
CONFIG_KIND = {"salt-train": "run", "salt-prepare": "run", "salt-teacher-cache": "run", "salt-compile": "run",
               "salt-bench": "run", "salt-experiment": "experiment"}
_KINDS = {  # kind -> (its top-level fields, the files that hold one, the command that takes one)
    "run": (("model", "data", "train", "salt"), "a run config (configs/*.py, e.g. configs/demo.py:salt)",
            "salt-train"),
    "experiment": (("teacher", "student", "methods", "seeds"),
                   "an experiment config (configs/experiments/*.py, e.g. configs/experiments/demo.py)",
                   "salt-experiment"),
}


def _config_spec(argv: list[str]) -> str | None:
    """The last --config=FILE[:ARG] (or `--config FILE[:ARG]`) of argv, as absl reads it."""
    spec = None
    for i, arg in enumerate(argv[1:], 1):
        if re.fullmatch(r"--?config", arg) and i + 1 < len(argv):
            spec = argv[i + 1]
        elif re.match(r"--?config=", arg):
            spec = arg.split("=", 1)[1]
    return spec


def config_kind(config) -> str | None:
    """"run" or "experiment" by the config's top-level fields, or None when it is neither."""
    keys = set(config.keys()) if hasattr(config, "keys") else set()
    return next((kind for kind, (fields, _, _) in _KINDS.items() if keys.issuperset(fields)), None)


def check_config_file(argv: list[str], command: str) -> None:
    """Loads --config's file as ml_collections will (FILE's get_config(ARG)) and exits with one line when it
    cannot be loaded or is not the kind of config `command` takes."""
    spec = _config_spec(argv)
    if not spec:
        return  # (load_config says --config is required)
    path, _, arg = spec.partition(":")
    where = f"--config={spec}"
    if not os.path.isfile(path):
        fail(f"{where}: no such file; pass an existing config file: {command} takes {_KINDS[CONFIG_KIND[command]][1]}")
    try:
        module_spec = importlib.util.spec_from_file_location("_salt_jax_config_check", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 -- any error of the user's file
        fail(f"{where}: loading the file raised {type(e).__name__}: {_first_line(e)}; fix the file")
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        fail(f"{where}: the file has no get_config(); a config file defines get_config() returning an "
             f"ml_collections.ConfigDict: {command} takes {_KINDS[CONFIG_KIND[command]][1]}")
    try:
        config = get_config(arg) if arg else get_config()
    except UserError as e:  # (set_method's unknown variant names the choices)
        fail(f"{where}: {e}")
    except TypeError as e:
        if arg and "positional argument" in str(e):
            fail(f"{where}: its get_config() takes no argument; drop ':{arg}'")
        fail(f"{where}: get_config({arg!r}) raised TypeError: {_first_line(e)}; fix the file or the :ARG")
    except Exception as e:  # noqa: BLE001 -- any error of the user's get_config
        fail(f"{where}: get_config({repr(arg) if arg else ''}) raised {type(e).__name__}: {_first_line(e)}"
             + ("; check the :ARG" if arg else "; fix the file"))
    want, got = CONFIG_KIND[command], config_kind(config)
    if got != want:
        fields, description, other = _KINDS[want]
        what = (f"it is {_KINDS[got][1].split(' (')[0]}, for {_KINDS[got][2]}" if got else
                f"it lacks {', '.join(f for f in fields if f not in (set(config.keys()) if hasattr(config, 'keys') else ()))}")
        fail(f"{where}: {command} takes {description}; {what}")


def _no_field(e: BaseException) -> str:
    """ml_collections' KeyError ("'stpes'\nDid you mean "steps" ...") as one readable clause."""
    message = str(e)  # the field's name comes first, quoted (and sometimes escaped twice)
    name = re.search(r"[A-Za-z_][A-Za-z0-9_]*", message)
    hint = re.search(r'Did you mean "([^"]+)"', message)
    return (f"the config has no field {name.group(0) if name else message!r}"
            + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))


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
