"""A run's device programs built from abstract shapes only, for any target mesh.

The same code as training builds them (salt_jax.train.step.StepPrograms and
salt_jax.kd.selection.scoring_program, with the run's state layout, donation,
loss and teacher layout), so what compiles here is what a run executes.
Nothing is allocated: parameters, optimizer state, teacher and batch are
ShapeDtypeStructs.

Programs: "kd" (the fused SALT step: frozen teacher forward + student update),
"baseline" (the teacher-free step; SALT runs it after the KD phase) and
"scoring" (SALT_DS's teacher pass over the pool).
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from salt_jax.config import validate
from salt_jax.data import alignment
from salt_jax.errors import UserError
from salt_jax.kd import alm, methods, objective, schedules, selection
from salt_jax.hf.source import resolve as resolve_teacher
from salt_jax.kd import teacher as teacher_lib
from salt_jax.kd.schedules import KDPhase
from salt_jax.model import attention, presets, sharding
from salt_jax.model.transformer import Transformer
from salt_jax.train import optim, state as state_lib
from salt_jax.train.step import StepPrograms, Guard


@dataclasses.dataclass(frozen=True)
class Unroll:
    """Iterations per loop body: of the student's layer stack, the teacher's, and the chunked loss."""

    student: int = 1
    teacher: int = 1
    loss: int = 1


def target_config(config: ml_collections.ConfigDict, platform: str) -> ml_collections.ConfigDict:
    """The run config as the target would run it: validated, step counts resolved, attention="auto" replaced
    by the target platform's kernel (splash on TPU), not the compiling host's."""
    config = copy.deepcopy(config)
    validate(config)
    config.salt = schedules.resolved(config.salt, config.train.steps)
    if config.model.attention == "auto":
        config.model.attention = attention.default_implementation(platform)
    return config


def teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    """The teacher's model config as it is held (config.salt.teacher_dtype), or None without a teacher.

    From config.salt.teacher_preset when set, else from the teacher checkpoint's record.
    """
    salt = config.salt
    if not methods.method(salt.method).teacher:
        return None
    if salt.teacher_preset:
        cfg = presets.model_config(salt.teacher_preset)
    else:
        try:
            cfg = teacher_lib.model_config(resolve_teacher(salt.teacher))
        except (UserError, KeyError):
            raise UserError(f"config.salt.teacher={salt.teacher!r} has no readable checkpoint here; to compile "
                            "before the teacher exists, set --config.salt.teacher_preset to its size (e.g. "
                            "paper-1.5b)") from None
    cfg = teacher_lib.held_config(cfg, salt)
    if cfg.attention == "auto":
        cfg.attention = config.model.attention
    return cfg


class Programs:
    """Lowers the programs of one run config on one mesh (call `lowered(name, unroll)`)."""

    def __init__(self, config: ml_collections.ConfigDict, mesh, teacher_cfg: ml_collections.ConfigDict | None):
        self.config, self.mesh, self.teacher_cfg = config, mesh, teacher_cfg
        self.method = methods.method(config.salt.method)
        d, t = config.data, config.train
        self.tokens = jax.ShapeDtypeStruct((d.batch_size, d.seq_len + 1), jnp.int32)
        self.tx, self.lr = optim.make_optimizer(config.optim, t.steps)
        self.phase = KDPhase.from_config(config.salt, t.steps, d.batch_size, switch_step=-1, lr=self.lr)
        self.guard = Guard(skip_nonfinite=t.nan_policy == "skip")
        self.state, self.state_shardings = state_lib.abstract_state(Transformer(config.model), self.tx, d.seq_len,
                                                                    mesh)
        # The teacher's parameter layout does not depend on how its loop is unrolled: found once.
        self.teacher_shardings = (teacher_lib.layout(teacher_cfg, config.salt, mesh)[1]
                                  if teacher_cfg is not None else None)

    @property
    def names(self) -> tuple[str, ...]:
        """The programs this run executes (a teacher run also gets "baseline", the KD step's reference)."""
        if not self.method.teacher:
            return ("baseline",)
        return ("kd", "baseline", "scoring") if self.method.selects_data else ("kd", "baseline")

    def loops(self, name: str) -> dict[str, int]:
        """Trip counts of the program's loops (a compiler cost model counts each body once)."""
        c = self.config
        chunks = -(-c.data.seq_len // max(1, min(c.train.loss_chunk, c.data.seq_len)))
        student = {"student": c.model.n_layers}
        if c.train.loss == "chunked":
            student["loss"] = chunks
        if name == "baseline":
            return student
        if name == "kd":  # (from cached teacher logits the KD step has no teacher loop)
            return student if self.cached else dict(student, teacher=self.teacher_cfg.n_layers)
        return {"teacher": self.teacher_cfg.n_layers}

    @property
    def cached(self) -> bool:
        """The KD step reads cached sparse teacher targets (config.salt.teacher_logits=cache)."""
        return self.config.salt.teacher_logits == "cache"

    @property
    def cross(self) -> bool:
        """The teacher tokenizes otherwise (config.salt.teacher_tokenizer=cross, given: compiling reads no
        teacher to decide `auto` with): the KD step takes aligned batches of teacher_seq_len teacher tokens (0:
        the student's seq_len) and, cached, the teacher's chunk log-likelihoods."""
        return self.config.salt.teacher_tokenizer == teacher_lib.CROSS

    def _aligned_tokens(self):
        d = self.config.data
        return alignment.shapes(d.batch_size, d.seq_len, self.config.salt.teacher_seq_len or d.seq_len,
                                sharding.batch_sharding(self.mesh))

    def _teacher(self, unroll: int) -> teacher_lib.FixedTeacher:
        """The KD step's teacher as shapes: the teacher model (its loop unrolled `unroll`) and its parameters'
        shapes, or one batch's cached sparse targets (across tokenizers: its chunk log-likelihoods)."""
        d, batch = self.config.data, sharding.batch_sharding(self.mesh)
        if self.cached and self.cross:
            chunks = alm.ChunkTargets(*(jax.ShapeDtypeStruct((d.batch_size, d.seq_len), jnp.float32, sharding=batch)
                                        for _ in range(2)))
            return teacher_lib.FixedTeacher(None, alm.ChunkTargets(batch, batch), chunks, True, aligned=True)
        if self.cached:
            return teacher_lib.FixedTeacher.of_targets(teacher_lib.target_shapes(
                d.batch_size, d.seq_len, self.config.salt.cache_k, batch))
        teacher = teacher_lib.FixedTeacher.of_model(Transformer(self.teacher_cfg, scan_unroll=unroll),
                                                    self.teacher_shardings, self.teacher_cfg)
        return dataclasses.replace(teacher, aligned=self.cross)

    def lowered(self, name: str, unroll: Unroll = Unroll()) -> jax.stages.Lowered:
        c = self.config
        model = Transformer(c.model, scan_unroll=unroll.student)
        loss = objective.make_loss(c)
        if isinstance(loss, objective.ChunkedLoss):
            loss = objective.ChunkedLoss(dataclasses.replace(loss.opts, unroll=unroll.loss))
        pad_id = 0  # only compared against token ids: its value changes no shape or cost
        if name == "scoring":
            teacher = self._teacher(unroll.teacher)  # (salt_ds never reads cached logits)
            fn = selection.scoring_program(teacher.model, teacher.shardings, c.salt.ds_topk, self.mesh, pad_id,
                                           self.cross)
            aligned = self._aligned_tokens()
            with sharding.on_mesh(self.mesh):
                return fn.lower(teacher.inputs(0), *((aligned.teacher_tokens, aligned.teacher_chunks) if self.cross
                                                     else (self.tokens,)))
        teacher = self._teacher(unroll.teacher) if name == "kd" else None
        steps = StepPrograms(model, self.tx, self.lr, pad_id, self.mesh, self.state_shardings, loss, self.guard,
                             teacher=teacher, phase=self.phase)
        tokens = self._aligned_tokens() if teacher is not None and self.cross else self.tokens
        return steps.lower(self.state, tokens, None if teacher is None else teacher.inputs(0))
