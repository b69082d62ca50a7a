"""The compiled steps: pure functions of (state, batch[, teacher params]) -> (state, metrics).

`make_train_step` builds one training step; given a teacher model it is the
fused SALT step (frozen teacher forward, student forward/backward, AdamW
update in one program), without one the plain next-token step. The loss is
one call (salt_jax.kd.objective: dense or chunked). `StepPrograms` jits the
steps with explicit shardings over the mesh and donates the state. Metrics are
sums and counts (salt_jax.kd.losses), reduced over the global batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from salt_jax.data.alignment import STATS as ALIGN_STATS
from salt_jax.kd import alm, sparse
from salt_jax.kd.losses import split_tokens
from salt_jax.kd.schedules import KDPhase, adaptive_update
from salt_jax.kd.teacher import Teacher
from salt_jax.model import sharding


@dataclasses.dataclass(frozen=True)
class Guard:
    """What a step does about a non-finite loss or gradient, and the NaN fault-injection hook.

    With `skip_nonfinite` a step whose loss or gradient norm is not finite
    leaves parameters, optimizer and KD state as they were (only the step
    counter advances, so the data order is unchanged) and reports
    `skipped` = 1 with zeroed sums. Without it the update is applied and the
    host stops the run before the poisoned state is checkpointed.
    `nan_steps` multiplies the loss of those steps by NaN (config.train.debug_nan_steps;
    step n is the n-th step, the one after which the step counter reads n).
    """

    skip_nonfinite: bool = False
    nan_steps: tuple[int, ...] = ()


def _poison(loss, step, guard: Guard):
    if not guard.nan_steps:
        return loss
    return loss * jnp.where(jnp.any(step + 1 == jnp.asarray(guard.nan_steps)), jnp.nan, 1.0)


def _guarded(state, new_state, metrics: dict, guard: Guard):
    """(state after the step, metrics with `skipped`): the update is dropped when skipping a non-finite step."""
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    metrics = dict(metrics, skipped=1.0 - ok.astype(jnp.float32))
    if not guard.skip_nonfinite:
        return new_state, metrics
    kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state.replace(step=state.step), state)
    sums = ("loss_sum", "ntp_sum", "kd_sum", "kd_weight_sum", "kd_tokens", "teacher_ntp_sum", "correct", "tokens",
            "aligned_tokens")
    metrics.update({k: jnp.where(ok, metrics[k], 0.0) for k in sums if k in metrics})
    return kept.replace(step=state.step + 1), metrics


def make_objective(model: nn.Module, loss, pad_id: int, guard: Guard = Guard(), teacher_model=None,
                   phase: KDPhase | None = None, sparse_targets: bool = False, aligned: bool = False):
    """The step's objective `(params, teacher_input, state, tokens) -> (mean loss, sums)`.

    With a teacher: ((1 - w_t) NTP + w_t KD) averaged over real tokens, w_t and
    tau from `phase`; `teacher_input` is the teacher's parameters, or with
    `sparse_targets` the batch's (cached) sparse teacher targets (salt_jax.kd.sparse.Targets).
    With `aligned` (a teacher with another tokenizer) `tokens` is a salt_jax.data.alignment.AlignedBatch, the
    KD term ALM (salt_jax.kd.alm), and a cached teacher's input its salt_jax.kd.alm.ChunkTargets.
    Without: the next-token loss (teacher_input is ignored).
    """
    kd = teacher_model is not None or sparse_targets

    def objective(params, teacher_input, state, tokens):
        if aligned:
            w_rows, w_mean = phase.row_weights(state.step, state.kd, tokens.tokens[:, 1:])
            teacher = alm.ChunkTargets(*teacher_input) if sparse_targets else (teacher_model, teacher_input)
            stats = loss.aligned(model, params, tokens, teacher, w_rows, phase.temperature(state.step))
            stats["kd_weight"] = w_mean
            stats.update({k: jnp.sum(tokens.stats[:, i]).astype(jnp.float32) for i, k in enumerate(ALIGN_STATS)})
            return _poison(stats["loss_sum"] / jnp.maximum(stats["tokens"], 1.0), state.step, guard), stats
        inputs, targets, mask = split_tokens(tokens, pad_id)
        if not kd:
            stats = loss(model, params, inputs, targets, mask)
        else:
            w_rows, w_mean = phase.row_weights(state.step, state.kd, targets)
            teacher = sparse.Targets(*teacher_input) if sparse_targets else (teacher_model, teacher_input)
            stats = loss(model, params, inputs, targets, mask, teacher, w_rows, phase.temperature(state.step))
            stats["kd_weight"] = w_mean
        return _poison(stats["loss_sum"] / jnp.maximum(stats["tokens"], 1.0), state.step, guard), stats

    return objective


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, lr_schedule, pad_id: int, loss,
                    guard: Guard = Guard(), teacher_model=None, phase: KDPhase | None = None,
                    sparse_targets: bool = False, aligned: bool = False):
    """One training step: (state, tokens[, teacher input]) -> (state, metrics).

    Forward, backward, clipping and the AdamW update of the student. With
    `teacher_model` (and the run's KD `phase`) it is the SALT step: the frozen
    teacher enters as an argument under stop_gradient (no gradients, no
    optimizer state), w(step) and the KD share are read in-graph from the step
    counter, and with salt.switch=adaptive the step records when the smoothed
    student NTP loss reaches the smoothed teacher NTP loss (+ margin).
    `guard` says what to do about non-finite steps (see Guard). With
    `sparse_targets` the teacher input is the batch's cached sparse targets
    instead of the teacher's parameters: the same step with no teacher forward.
    With `aligned` the teacher has another tokenizer (make_objective).
    """
    objective = make_objective(model, loss, pad_id, guard, teacher_model, phase, sparse_targets, aligned)
    kd = teacher_model is not None or sparse_targets

    def step(state, tokens, teacher_input=None):
        (value, stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params, teacher_input, state,
                                                                           tokens)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        kd_state = state.kd
        if not kd:
            stats = dict(stats, ntp_sum=stats["loss_sum"])
        elif phase.adaptive:
            n = jnp.maximum(stats["tokens"], 1.0)
            kd_state = adaptive_update(state.kd, state.step, stats["ntp_sum"] / n, stats["teacher_ntp_sum"] / n,
                                       phase.salt)
        metrics = dict(stats, loss=value, grad_norm=optax.tree.norm(grads), learning_rate=lr_schedule(state.step))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, kd=kd_state)
        return _guarded(state, new_state, metrics, guard)

    if not kd:  # the teacher-free program takes no teacher argument (nothing to shard or donate)
        return lambda state, tokens: step(state, tokens)
    return step


def make_eval_step(model: nn.Module, pad_id: int, loss):
    """Held-out next-token loss and accuracy on one batch, as sums and counts."""

    def eval_step(params, tokens):
        inputs, targets, mask = split_tokens(tokens, pad_id)
        return loss(model, params, inputs, targets, mask)

    return eval_step


class StepPrograms:
    """The jitted steps of one run on one mesh: train (with the teacher while it is held) and eval.

    `teacher` (salt_jax.kd.teacher.Teacher) gives the SALT step's teacher
    model and its input's layout; `train(state, tokens, teacher_input)` runs
    the fused SALT step (teacher_input: `teacher.inputs(step)`),
    `train(state, tokens)` the teacher-free one; `drop_teacher` forgets the
    SALT step's program when the KD phase ends. Calls run under the mesh and
    the logical-axis rules (sharding.on_mesh).
    """

    def __init__(self, model, tx, lr_schedule, pad_id: int, mesh, state_shardings, loss, guard: Guard = Guard(),
                 teacher: Teacher | None = None, phase: KDPhase | None = None):
        self.mesh = mesh
        self.pad_id, self._args = pad_id, (model, tx, lr_schedule, pad_id, mesh, state_shardings, loss, guard)
        self.batch_sharding = sharding.batch_sharding(mesh)
        rep = sharding.replicated(mesh)
        self._train = jax.jit(make_train_step(model, tx, lr_schedule, pad_id, loss, guard),
                              in_shardings=(state_shardings, self.batch_sharding),
                              out_shardings=(state_shardings, rep), donate_argnums=0)
        self._eval = jax.jit(make_eval_step(model, pad_id, loss),
                             in_shardings=(state_shardings.params, self.batch_sharding), out_shardings=rep)
        self._kd_train = None
        if teacher is not None:  # (its input: parameters, or the batch's sparse targets, laid out as `shardings`)
            self._kd_train = jax.jit(make_train_step(model, tx, lr_schedule, pad_id, loss, guard, teacher.model,
                                                     phase, teacher.sparse_targets, teacher.aligned),
                                     in_shardings=(state_shardings, self.batch_sharding, teacher.shardings),
                                     out_shardings=(state_shardings, rep), donate_argnums=0)

    def train(self, state, tokens, teacher_input=None):
        with sharding.on_mesh(self.mesh):
            if teacher_input is None:
                return self._train(state, tokens)
            return self._kd_train(state, tokens, teacher_input)

    def lower(self, state, tokens, teacher_input=None):
        """The lowered train step (the SALT step when `teacher_input` is given), to inspect its cost."""
        with sharding.on_mesh(self.mesh):
            if teacher_input is None:
                return self._train.lower(state, tokens)
            return self._kd_train.lower(state, tokens, teacher_input)

    def eval(self, params, tokens):
        with sharding.on_mesh(self.mesh):
            return self._eval(params, tokens)

    def drop_teacher(self) -> None:
        self._kd_train = None

    def with_teacher(self, teacher: Teacher, phase: KDPhase) -> "StepPrograms":
        """The same run's programs with `teacher`'s SALT step of `phase` (salt_jax.bench --loop: one run's
        steps, with each kind of teacher)."""
        return StepPrograms(*self._args, teacher=teacher, phase=phase)
