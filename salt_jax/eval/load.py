"""A run's checkpoint as something to evaluate: model config, parameters on a mesh, and its tokenizer.

Works on a training run's workdir (any method), one of its checkpoint
directories, or a checkpoint imported from Hugging Face
(`python -m salt_jax.hf import`). The tokenizer is the one the run trained
with: bytes, the run's SentencePiece model (kept as workdir/tokenizer.model;
older runs: found in the token cache by its fingerprint) or the HF tokenizer
directory it names. Its fingerprint must match the checkpoint's record.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
from flax import linen as nn

from salt_jax import paths
from salt_jax.data import store
from salt_jax.data.tokenizer import ByteTokenizer, HFTokenizer, SentencePieceTokenizer
from salt_jax.errors import UserError
from salt_jax.model import checkpoints, sharding
from salt_jax.model.transformer import Transformer, abstract_params


@dataclasses.dataclass
class Loaded:
    model_cfg: ml_collections.ConfigDict
    params: Any  # on `mesh`, laid out by the training rules
    tokenizer: Any
    mesh: Any
    step: int
    checkpoint: str  # the checkpoint directory read
    run_config: dict  # the run's config.json ({} for an imported checkpoint)


def _run_config(workdir: str) -> dict:
    path = paths.join(workdir, "config.json")
    try:
        return paths.read_json(path) if paths.exists(path) else {}
    except (OSError, ValueError):
        return {}


def _sentencepiece(workdir: str, tok_cfg: dict, want: str) -> SentencePieceTokenizer:
    kept = paths.join(workdir, "tokenizer.model")
    if paths.exists(kept):
        return SentencePieceTokenizer(kept)
    if tok_cfg.get("model_file"):
        return SentencePieceTokenizer(tok_cfg["model_file"])
    cache = paths.join(paths.expand(store.default_cache_dir()), "tokenizers")
    for directory in {paths.join(paths.expand(tok_cfg.get("cache_dir") or store.default_cache_dir()), "tokenizers"),
                      cache}:
        if not paths.isdir(directory):
            continue
        for name in sorted(paths.listdir(directory)):
            if name.endswith(".model"):
                tok = SentencePieceTokenizer(paths.join(directory, name))
                if tok.fingerprint() == want:
                    return tok
    raise UserError(f"{workdir}: its SentencePiece tokenizer ({want}) is neither in tokenizer.model nor in the "
                    "token cache; copy the run's .model file to that path")


def run_tokenizer(workdir: str, record: dict, run_config: dict):
    """The tokenizer a checkpoint's run trained with (its fingerprint checked against the record)."""
    tok_cfg = dict((run_config.get("data") or {}).get("tokenizer") or {})
    tok_cfg["cache_dir"] = (run_config.get("data") or {}).get("cache_dir", "")
    want = record.get("tokenizer", "")
    if record.get("hf_tokenizer"):  # an imported Hugging Face checkpoint
        tok = HFTokenizer(os.path.join(workdir, record["hf_tokenizer"]))
    elif tok_cfg.get("kind") == "hf":
        tok = HFTokenizer(tok_cfg["hf_dir"])
    elif tok_cfg.get("kind") == "sentencepiece" or want.startswith("sp-"):
        tok = _sentencepiece(workdir, tok_cfg, want)
    else:
        tok = ByteTokenizer()
    if want and tok.fingerprint() != want:
        raise UserError(f"{workdir}: the checkpoint was trained with tokenizer {want}, but {tok.fingerprint()} "
                        "was found; point the run at its own tokenizer (config.data.tokenizer)")
    return tok


def load(workdir: str, step: int | None = None, mesh_cfg: ml_collections.ConfigDict | None = None,
         field: str = "--workdir") -> Loaded:
    """The parameters of checkpoint `step` (default: the latest) of `workdir`, on a mesh of all devices
    (or `mesh_cfg`), with the run's tokenizer."""
    root, latest = checkpoints.resolve_checkpoint(workdir, field, role="run")
    step = latest if step is None else step
    if not paths.isdir(paths.join(root, str(step))):
        have = sorted(int(d) for d in paths.listdir(root) if d.isdigit())
        raise UserError(f"--step={step}: no checkpoint {step} in {root}; it has {have}")
    record = checkpoints.read_record(root, step) or {}
    if "model" not in record:
        raise UserError(f"{paths.join(root, str(step))}: no readable record with the model config; is it a "
                        "salt_jax checkpoint?")
    run_dir = root.rstrip("/").rsplit("/", 1)[0] if root.rstrip("/").endswith("/checkpoints") else root
    run_config = _run_config(run_dir)
    tok = run_tokenizer(run_dir, record, run_config)
    cfg = ml_collections.ConfigDict(record["model"])
    mesh = sharding.make_mesh(mesh_cfg or ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
    model = Transformer(cfg)
    boxed = abstract_params(model)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.meta.unbox(boxed),
                          sharding.shardings_for(boxed, mesh))
    params = checkpoints.restore_params(root, step, target)
    return Loaded(cfg, params, tok, mesh, step, paths.join(root, str(step)), run_config)
