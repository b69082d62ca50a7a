"""python tests/flags_parse.py MODULE [FLAG ...]: MODULE's command line parsed, and nothing run.

The flags go through the command's own absl flags and salt_jax.cli.parse_flags (what `python -m MODULE`
does first): an unknown flag or a bad value exits 2 with one line. A --config file is then loaded by
ml_collections' config_flags with every --config.* override applied (an unknown field or a value of the
wrong type exits 2), and a run config is validated (salt_jax.config.validate). Prints `ok: ...` and exits
0 otherwise. tests/test_docs_commands.py checks the commands it cannot run with this.
"""

import importlib
import importlib.util
import sys


def main() -> None:
    module, args = sys.argv[1], sys.argv[2:]
    package = importlib.util.find_spec(module).submodule_search_locations is not None
    main_module = f"{module}.__main__" if package else module
    command = importlib.import_module(main_module)  # defines the command's flags
    from salt_jax import cli, config as run_config
    from salt_jax.errors import UserError

    argv = [module, *args]
    sys.argv = argv  # (config_flags reads the --config.* overrides from sys.argv)
    cli.parse_flags(argv)
    what = "flags"
    if getattr(command, "_CONFIG", None) is not None:
        c = cli.load_config(command._CONFIG)
        what = "flags and config"
        if "model" in c:  # a run config (an experiment config is checked by the command's --dry_run)
            try:
                run_config.validate(c)
            except UserError as e:
                cli.fail(str(e))
            what += " (validated)"
    print(f"ok: {what} of python -m {module}", flush=True)


if __name__ == "__main__":
    main()
