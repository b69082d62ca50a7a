"""A run's checkpoint as something to evaluate: model config, parameters on a mesh, and its tokenizer.

Works on a training run's workdir (any method), one of its checkpoint
directories, or a checkpoint imported from Hugging Face
(`python -m salt_jax.hf import`). The tokenizer is the one the run trained
with: the copy the run keeps in workdir/tokenizer/ (its SentencePiece model, or
its Hugging Face tokenizer's files; bytes need none), else (older runs) what its
config.json names, a SentencePiece model found in the token cache by its
fingerprint. Its fingerprint must match the checkpoint's record.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
from flax import linen as nn

from salt_jax import paths
from salt_jax.data import store
from salt_jax.data import tokenizer
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


def run_tokenizer(workdir: str, record: dict, run_config: dict):
    """The tokenizer a checkpoint's run trained with (salt_jax.data.tokenizer.run_tokenizer: the run's kept copy
    first), its fingerprint checked against the record."""
    cache = (run_config.get("data") or {}).get("cache_dir") or ""
    return tokenizer.run_tokenizer(workdir, record, run_config, (paths.expand(cache or store.default_cache_dir()),
                                                                 paths.expand(store.default_cache_dir())))


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
    if tok is None:
        raise UserError(f"{run_dir}: imported from a Hugging Face directory that had no tokenizer.json; import it "
                        "again from a directory that has its tokenizer")
    cfg = ml_collections.ConfigDict(record["model"])
    mesh = sharding.make_mesh(mesh_cfg or ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
    model = Transformer(cfg)
    boxed = abstract_params(model)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.meta.unbox(boxed),
                          sharding.shardings_for(boxed, mesh))
    params = checkpoints.restore_params(root, step, target)
    return Loaded(cfg, params, tok, mesh, step, paths.join(root, str(step)), run_config)
