"""Hugging Face interop from the command line.

    python -m salt_jax.hf import --hf-dir DIR --out CKPT   # -> a teacher checkpoint (config.salt.teacher=CKPT)
    python -m salt_jax.hf export --workdir RUN --out DIR   # -> config.json + safetensors (+ tokenizer files)
"""

from __future__ import annotations

import argparse
import logging
import os

from salt_jax.cli import fail, setup_logging
from salt_jax.errors import UserError
from salt_jax.hf.convert import export_hf, import_hf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m salt_jax.hf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="HF model directory -> salt_jax teacher checkpoint")
    imp.add_argument("--hf-dir", required=True, help="local Hugging Face model directory (config.json + safetensors)")
    imp.add_argument("--out", required=True, help="new directory for the checkpoint (use it as config.salt.teacher)")
    imp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                     help="compute dtype recorded in the model config (parameters stay float32)")
    exp = sub.add_parser("export", help="salt_jax run -> HF model directory")
    exp.add_argument("--workdir", required=True, help="the run's workdir (or a checkpoints directory)")
    exp.add_argument("--out", required=True, help="directory to write config.json + safetensors into")
    exp.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    exp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                     help="dtype of the written tensors")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.command == "import":
            path = import_hf(args.hf_dir, args.out, dtype=args.dtype)
            logging.info("wrote %s; use it with --config.salt.teacher=%s", path, os.path.abspath(args.out))
        else:
            family = export_hf(args.workdir, args.out, args.step, args.dtype)
            logging.info("wrote %s (%s); load it with AutoModelForCausalLM.from_pretrained", args.out, family)
    except UserError as e:
        fail(str(e))
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _HF_EXTRA:
            raise
        fail(f"{(e.name or '').split('.')[0]} is not installed: Hugging Face interop needs the [hf] extra; "
             "run pip install -e \".[hf]\" (or pip install salt_jax[hf])")


_HF_EXTRA = ("safetensors", "tokenizers", "torch", "transformers", "huggingface_hub")


if __name__ == "__main__":
    main()
