"""The frozen teacher: found from config.salt.teacher, restored once onto the mesh.

config.salt.teacher may also be a Hugging Face model directory (read by
`salt_jax.hf`, straight into the sharded layout).

The teacher's model config and tokenizer come from its checkpoint's record, so
a student run names only the teacher's workdir (or one checkpoint directory).
Only the parameters are restored (no optimizer state). A fingerprint of the
teacher checkpoint goes into the student's checkpoints so a resume with
another teacher is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import jax
import ml_collections
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from salt_jax import checkpoints, sharding, state as state_lib
from salt_jax.errors import UserError
from salt_jax.model import Transformer


@dataclasses.dataclass
class Teacher:
    model: Transformer
    config: ml_collections.ConfigDict  # the teacher's model config
    params: Any  # on the mesh
    shardings: Any
    checkpoint: str  # the checkpoint directory it came from
    fingerprint: str
    tokenizer: str  # the fingerprint of the tokenizer it was trained with

    def identity(self) -> dict:
        return {"checkpoint": self.checkpoint, "fingerprint": self.fingerprint}

    def release(self) -> None:
        """Frees the teacher's device memory (after the KD phase)."""
        for leaf in jax.tree.leaves(self.params):
            leaf.delete()
        self.params = None


def resolve_checkpoint(path: str) -> tuple[str, int]:
    """(checkpoints directory, step) for a teacher workdir or a single checkpoint directory."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise UserError(f"config.salt.teacher={path}: no such directory; give the teacher run's workdir "
                        "or one of its checkpoint directories")
    if os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")) or os.path.isdir(os.path.join(path, "state")):
        base, step = os.path.split(path)
        if step.isdigit():
            return base, int(step)
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    steps = sorted(int(d) for d in os.listdir(root)
                   if d.isdigit() and os.path.exists(os.path.join(root, d, "_CHECKPOINT_METADATA")))
    if not steps:
        raise UserError(f"config.salt.teacher={path}: no finished checkpoint in it; train the teacher first "
                        "(a run with config.salt.method=teacher) or point at its workdir")
    return root, steps[-1]


def read_record(root: str, step: int) -> dict:
    """The teacher checkpoint's record (model config, tokenizer), or a clear error."""
    record = checkpoints.read_record(root, step)
    if record is None:
        raise UserError(f"{os.path.join(root, str(step))}: teacher checkpoint has no readable record "
                        "(model config); was it written by salt_jax?")
    return record


def checkpoint_fingerprint(ckpt_dir: str) -> str:
    """A short hash of a checkpoint's saved parameters, from its files.

    Hashes the record and every metadata / manifest file of the saved state
    (and the sizes of the data files), so it identifies the checkpoint's
    contents wherever it is copied, and does not depend on the mesh or the
    number of devices it is read onto.
    """
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(ckpt_dir)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, ckpt_dir)
            if rel == "commit_success.txt" or rel.endswith("/commit_success.txt") or name == "_CHECKPOINT_METADATA":
                continue  # written at save time (timestamps), not content
            size = os.path.getsize(path)
            h.update(f"{rel}:{size}\n".encode())
            if size <= 1 << 20:
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()[:16]


def held_config(cfg: ml_collections.ConfigDict, salt_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The teacher's model config as it is held: a frozen teacher needs no float32 master copy, so
    config.salt.teacher_dtype (e.g. bfloat16) sets its parameter and compute dtype."""
    if salt_cfg.get("teacher_dtype", ""):
        cfg.param_dtype = cfg.dtype = salt_cfg.teacher_dtype
    return cfg


def layout(cfg: ml_collections.ConfigDict, salt_cfg: ml_collections.ConfigDict, mesh) -> tuple[Transformer, Any]:
    """(teacher model, its parameters' shardings): config.salt.teacher_sharding's layout on the mesh."""
    model = Transformer(cfg)
    boxed = state_lib.abstract_params(model)
    if salt_cfg.teacher_sharding == "replicated":
        return model, jax.tree.map(lambda _: NamedSharding(mesh, P()), nn.meta.unbox(boxed))
    return model, sharding.shardings_for(boxed, mesh)


def load_teacher(salt_cfg: ml_collections.ConfigDict, student_model_cfg: ml_collections.ConfigDict,
                 tokenizer_fingerprint: str, mesh) -> Teacher:
    """Reads the teacher's config, checks it against the student, restores its parameters.

    Vocabulary checks happen before anything is compiled or restored.
    """
    from salt_jax import hf

    if hf.is_hf_dir(os.path.abspath(os.path.expanduser(salt_cfg.teacher))):  # a Hugging Face model directory
        return hf.load_teacher(salt_cfg.teacher, salt_cfg, student_model_cfg, tokenizer_fingerprint, mesh)
    root, step = resolve_checkpoint(salt_cfg.teacher)
    ckpt_dir = os.path.join(root, str(step))
    record = read_record(root, step)
    if "model" not in record:
        raise UserError(f"{ckpt_dir}: the checkpoint record has no model config; re-train the teacher with "
                        "this version of salt_jax")
    cfg = held_config(ml_collections.ConfigDict(record["model"]), salt_cfg)
    if cfg.vocab_size != student_model_cfg.vocab_size:
        raise UserError(f"config.salt.teacher: the teacher's vocabulary ({cfg.vocab_size}) differs from the "
                        f"student's config.model.vocab_size ({student_model_cfg.vocab_size}); teacher and "
                        "student must share one tokenizer and vocabulary")
    if record.get("tokenizer") and record["tokenizer"] != tokenizer_fingerprint:
        raise UserError(f"config.salt.teacher: the teacher was trained with tokenizer {record['tokenizer']}, "
                        f"the student uses {tokenizer_fingerprint}; use the teacher's config.data.tokenizer "
                        "settings (same source and vocab_size, or its model_file)")

    model, shardings = layout(cfg, salt_cfg, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(state_lib.abstract_params(model)), shardings)
    params = checkpoints.restore_params(root, step, target, "teacher checkpoint")
    return Teacher(model=model, config=cfg, params=params, shardings=shardings, checkpoint=ckpt_dir,
                   fingerprint=checkpoint_fingerprint(ckpt_dir), tokenizer=record.get("tokenizer", ""))
