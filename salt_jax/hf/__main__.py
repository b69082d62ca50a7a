"""Hugging Face interop from the command line: a subcommand, then its flags.

    python -m salt_jax.hf import --hf_dir=DIR --out=CKPT [--dtype=bfloat16]
        a local Hugging Face model directory -> a salt_jax teacher checkpoint (config.salt.teacher=CKPT)
    python -m salt_jax.hf export --workdir=RUN --out=DIR [--step=N] [--dtype=bfloat16]
        a salt_jax run's checkpoint -> config.json + safetensors (+ tokenizer files) for
        AutoModelForCausalLM.from_pretrained

Library calls: salt_jax.hf.import_hf, salt_jax.hf.export_hf, salt_jax.hf.load_params.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

from salt_jax.cli import fail, flags_parser, keep_jax_off_an_absent_tpu, own_flags_help, setup_logging
from salt_jax.errors import UserError
from salt_jax.hf.convert import export_hf, import_hf

SUBCOMMANDS = ("import", "export")

_HF_DIR = flags.DEFINE_string("hf_dir", None, "import: local Hugging Face model directory (config.json + "
                              "safetensors).")
_WORKDIR = flags.DEFINE_string("workdir", None, "export: the run's workdir (or a checkpoints directory).")
_OUT = flags.DEFINE_string("out", None, "import: new directory for the checkpoint (use it as config.salt.teacher); "
                           "export: directory to write config.json + safetensors into.")
_STEP = flags.DEFINE_integer("step", None, "export: checkpoint step (default: the latest).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "import: compute dtype recorded in the model config (float32 or bfloat16; parameters "
                           "stay float32); export: dtype of the written tensors.")

_HF_EXTRA = ("safetensors", "tokenizers", "torch", "transformers", "huggingface_hub")


def _help() -> str:
    return "\n".join([(__doc__ or "").strip(), "", "subcommands:",
                      "  import   HF model directory -> salt_jax teacher checkpoint (--hf_dir, --out, --dtype)",
                      "  export   salt_jax run -> HF model directory (--workdir, --out, --step, --dtype)",
                      "", "flags:", *own_flags_help()])


def _main(argv: list[str]) -> None:
    command = argv[1:]
    if not command:
        fail("give a subcommand: import or export (python -m salt_jax.hf --help)")
    if command[0] not in SUBCOMMANDS or len(command) > 1:
        fail(f"unknown subcommand {' '.join(command)!r}: use import or export (python -m salt_jax.hf --help)")
    command = command[0]
    if command == "import":
        for name, flag in (("workdir", _WORKDIR), ("step", _STEP)):
            if flag.present:
                fail(f"--{name} applies to export, not import")
        if not _HF_DIR.value or not _OUT.value:
            fail("import needs --hf_dir=DIR (a Hugging Face model directory) and --out=CKPT (a new directory)")
        if _DTYPE.value == "float16":
            fail("--dtype=float16: import records float32 or bfloat16 as the compute dtype")
    else:
        if _HF_DIR.present:
            fail("--hf_dir applies to import, not export")
        if not _WORKDIR.value or not _OUT.value:
            fail("export needs --workdir=RUN (a run's workdir) and --out=DIR (the Hugging Face directory to write)")
    keep_jax_off_an_absent_tpu()
    setup_logging()
    try:
        if command == "import":
            path = import_hf(_HF_DIR.value, _OUT.value, dtype=_DTYPE.value)
            logging.info("wrote %s; use it with --config.salt.teacher=%s", path, os.path.abspath(_OUT.value))
        else:
            family = export_hf(_WORKDIR.value, _OUT.value, _STEP.value, _DTYPE.value)
            logging.info("wrote %s (%s); load it with AutoModelForCausalLM.from_pretrained", _OUT.value, family)
    except UserError as e:
        fail(str(e))
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _HF_EXTRA:
            raise
        fail(f"{(e.name or '').split('.')[0]} is not installed: Hugging Face interop needs the [hf] extra; "
             "run pip install -e \".[hf]\" (or pip install salt_jax[hf])")


def main(argv: list[str] | None = None) -> None:
    """salt-hf / python -m salt_jax.hf; `argv` (without the program name) defaults to the command line."""
    app.run(_main, argv=None if argv is None else [sys.argv[0], *argv],
            flags_parser=flags_parser(_help, "salt-hf", "import|export [flags]"))


if __name__ == "__main__":
    main()
