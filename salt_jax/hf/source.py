"""Where a teacher comes from, decided once: a Hugging Face model directory or a salt_jax checkpoint.

`resolve(path, field)` is the one place that answers it for config.salt.teacher,
config.salt.ds_reference and an experiment's teacher_path. It returns a
`TeacherSource`: the kind, the path read (`~` expanded, a relative path made
absolute against the current directory, a gs:// or s3:// URI as given: see
salt_jax.paths.expand) and, for a checkpoint, its checkpoints directory and
step. Checking, identifying and loading a teacher all take that value
(salt_jax.kd.teacher, salt_jax.hf.convert.teacher_hf_info), so a teacher is
checked where it is read. Imports salt_jax.paths, salt_jax.model.checkpoints
and salt_jax.hf.files only.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from salt_jax import paths
from salt_jax.hf import files as hf_files
from salt_jax.model import checkpoints

HF, CHECKPOINT = "hf", "checkpoint"


@dataclasses.dataclass(frozen=True)
class TeacherSource:
    """A teacher's files, resolved (`resolve`): a Hugging Face model directory, or one checkpoint of a run."""

    kind: Literal["hf", "checkpoint"]
    path: str  # the directory given, resolved: ~ expanded, absolute (a URI as given)
    root: str = ""  # a checkpoint: the directory holding its step directories (a run's checkpoints/)
    step: int = -1  # a checkpoint: its step (a run's latest finished one)
    field: str = "config.salt.teacher"  # the setting that named it (its errors name it)

    @property
    def directory(self) -> str:
        """What is read: the Hugging Face directory, or the checkpoint directory root/step."""
        return self.path if self.kind == HF else paths.join(self.root, str(self.step))

    @property
    def run_dir(self) -> str:
        """Where the teacher's other files are (a kept tokenizer, an import's hf_tokenizer/): a checkpoint's run
        workdir (the parent of root when root is a run's checkpoints/), or the Hugging Face directory."""
        if self.kind == HF:
            return self.path
        root = self.root.rstrip("/")
        return root.rsplit("/", 1)[0] if root.endswith("/checkpoints") else self.root


def resolve(path: str, field: str = "config.salt.teacher") -> TeacherSource:
    """The TeacherSource of `path` (a Hugging Face model directory: config.json + *.safetensors, local only; else a
    run's workdir, its checkpoints/ directory or one checkpoints/<step> directory), or the one-line UserError of a
    path that is missing or holds no finished checkpoint, naming `field`."""
    where = paths.expand(path)
    if not paths.is_remote(where) and hf_files.is_hf_dir(where):
        return TeacherSource(HF, where, field=field)
    root, step = checkpoints.resolve_checkpoint(where, field)
    return TeacherSource(CHECKPOINT, where, root, step, field)
