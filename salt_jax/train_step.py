"""The compiled steps: pure functions of (state, batch) -> (state, metrics).

`make_train_step` and `make_eval_step` return plain functions; `compile_steps`
jits them with explicit shardings over the mesh and donates the state.
Metrics are sums and counts (see salt_jax.losses), reduced over the global batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from salt_jax import losses, sharding
from salt_jax.chunked_loss import LossOptions, chunked_loss
from salt_jax.model import option


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
    sums = ("loss_sum", "ntp_sum", "kd_sum", "kd_weight_sum", "kd_tokens", "teacher_ntp_sum", "correct", "tokens")
    metrics.update({k: jnp.where(ok, metrics[k], 0.0) for k in sums if k in metrics})
    return kept.replace(step=state.step + 1), metrics


def ntp_stats(model: nn.Module, params, inputs, targets, mask, loss_opts: LossOptions | None):
    """Next-token loss sums of `model` on one batch: dense logits, or chunked from hidden states."""
    if loss_opts is None:
        return losses.next_token_stats(model.apply({"params": params}, inputs), targets, mask)
    loss_opts = dataclasses.replace(loss_opts, student_softcap=float(option(model.cfg, "final_softcap")))
    hidden, head = model.apply({"params": params}, inputs, return_hidden=True)
    stats = chunked_loss(hidden, head, targets, mask, loss_opts)
    return {k: stats[k] for k in ("loss_sum", "correct", "tokens")}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, lr_schedule, pad_id: int,
                    loss_opts: LossOptions | None = None, guard: Guard = Guard()):
    """One next-token training step: forward, backward, clip, AdamW update.

    `loss_opts` selects the chunked loss (salt_jax.chunked_loss); None is the dense reference.
    `guard` says what to do about non-finite steps (see Guard).
    """

    def train_step(state, tokens):
        inputs, targets, mask = losses.split_tokens(tokens, pad_id)

        def loss_fn(params):
            stats = ntp_stats(model, params, inputs, targets, mask, loss_opts)
            return _poison(stats["loss_sum"] / jnp.maximum(stats["tokens"], 1.0), state.step, guard), stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(stats, ntp_sum=stats["loss_sum"], loss=loss, grad_norm=optax.tree.norm(grads),
                       learning_rate=lr_schedule(state.step))
        return _guarded(state, state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics,
                        guard)

    return train_step


def make_kd_train_step(model: nn.Module, teacher_model: nn.Module, tx: optax.GradientTransformation,
                       lr_schedule, pad_id: int, salt, kd_weight, kd_share, loss_opts: LossOptions | None = None,
                       guard: Guard = Guard()):
    """One SALT step: frozen teacher forward, student forward/backward, AdamW update.

    `kd_weight` and `kd_share` are optax schedules (see salt_jax.schedules) read
    in-graph from the step counter. The teacher enters as an argument under
    stop_gradient: it has no gradients and no optimizer state. With
    salt.switch == "adaptive", w drops to 0 from the step at which the smoothed
    student NTP loss reaches the smoothed teacher NTP loss (+ margin).
    `loss_opts` selects the chunked loss (from hidden states); None is the dense reference.
    """
    if loss_opts is not None:  # the models' final soft-caps are applied inside the chunked loss
        loss_opts = dataclasses.replace(loss_opts, student_softcap=float(option(model.cfg, "final_softcap")),
                                        teacher_softcap=float(option(teacher_model.cfg, "final_softcap")))

    def row_weights(state, targets):
        """w per position before token selection: w(step) in the KD share of rows, else 0; and its batch mean."""
        w = kd_weight(state.step)
        if salt.switch == "adaptive":
            w = jnp.where(state.kd["switch_step"] >= 0, 0.0, salt.kd_weight)
        batch = targets.shape[0]
        n_kd_rows = jnp.round(kd_share(state.step) * batch)
        in_share = (jnp.arange(batch) < n_kd_rows)[:, None]
        return jnp.broadcast_to(w * in_share.astype(jnp.float32), targets.shape), w * n_kd_rows / batch

    def step_loss(params, teacher_params, state, tokens):
        """The SALT objective for this step: ((1 - w_t) NTP + w_t KD) averaged over real tokens."""
        inputs, targets, mask = losses.split_tokens(tokens, pad_id)
        w_rows, w_mean = row_weights(state, targets)
        if loss_opts is not None:
            h_t, head_t = jax.lax.stop_gradient(
                teacher_model.apply({"params": teacher_params}, inputs, return_hidden=True))
            h_s, head_s = model.apply({"params": params}, inputs, return_hidden=True)
            stats = chunked_loss(h_s, head_s, targets, mask, loss_opts, h_t, head_t, w_rows)
            stats["kd_weight"] = w_mean
            return _poison(stats["loss_sum"] / jnp.maximum(stats["tokens"], 1.0), state.step, guard), stats
        t_logits = jax.lax.stop_gradient(teacher_model.apply({"params": teacher_params}, inputs))
        selected = losses.teacher_selection(t_logits, targets, salt.token_select, salt.token_select_k,
                                            salt.token_select_threshold)
        w_tok = w_rows * selected
        s_logits = model.apply({"params": params}, inputs)
        ntp = losses.token_ce(s_logits, targets)
        kd = losses.kd_per_token(t_logits, s_logits, salt.temperature, salt.kd_loss, salt.kd_topk)
        stats = losses.mixture_stats(ntp, kd, w_tok, mask)
        stats.update(correct=jnp.sum((jnp.argmax(s_logits, -1) == targets) * mask),
                     tokens=jnp.sum(mask.astype(jnp.float32)), kd_weight=w_mean,
                     teacher_ntp_sum=jnp.sum(losses.token_ce(t_logits, targets) * mask))
        return _poison(stats["loss_sum"] / jnp.maximum(stats["tokens"], 1.0), state.step, guard), stats

    def kd_train_step(state, tokens, teacher_params):
        (loss, stats), grads = jax.value_and_grad(step_loss, has_aux=True)(state.params, teacher_params, state,
                                                                           tokens)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        kd_state = state.kd
        if salt.switch == "adaptive":
            n = jnp.maximum(stats["tokens"], 1.0)
            kd_state = _adaptive_update(state.kd, state.step, stats["ntp_sum"] / n, stats["teacher_ntp_sum"] / n,
                                        salt)
        metrics = dict(stats, loss=loss, grad_norm=optax.tree.norm(grads), learning_rate=lr_schedule(state.step))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, kd=kd_state)
        return _guarded(state, new_state, metrics, guard)

    kd_train_step.loss = step_loss  # exposed for tests (e.g. no gradient reaches the teacher)
    return kd_train_step


def _adaptive_update(kd, step, student_ntp, teacher_ntp, salt):
    """Updates the loss EMAs and records the switch step once the student has caught up."""
    d = salt.adaptive_ema
    ema_s = d * kd["ema_student"] + (1 - d) * student_ntp
    ema_t = d * kd["ema_teacher"] + (1 - d) * teacher_ntp
    debias = 1 - d ** (step + 1).astype(jnp.float32)
    done = step + 1
    caught_up = ema_s / debias <= ema_t / debias + salt.adaptive_margin
    allowed = done >= salt.adaptive_min_steps
    forced = (salt.adaptive_max_steps >= 0) & (done >= salt.adaptive_max_steps)
    switch_now = (kd["switch_step"] < 0) & ((caught_up & allowed) | forced)
    return {"switch_step": jnp.where(switch_now, done, kd["switch_step"]).astype(jnp.int32),
            "ema_student": ema_s, "ema_teacher": ema_t}


def make_eval_step(model: nn.Module, pad_id: int, loss_opts: LossOptions | None = None):
    """Held-out next-token loss and accuracy on one batch, as sums and counts."""

    def eval_step(params, tokens):
        inputs, targets, mask = losses.split_tokens(tokens, pad_id)
        return ntp_stats(model, params, inputs, targets, mask, loss_opts)

    return eval_step


class CompiledSteps:
    """The jitted train, KD-train and eval steps for one mesh, with their shardings.

    Calls run under the mesh and the logical-axis rules, so activation
    constraints in the model resolve to mesh axes. `kd_train` exists only when
    a teacher is given; `drop_teacher` forgets it (and its compiled program).
    """

    def __init__(self, model, tx, lr_schedule, pad_id: int, mesh, state_shardings, teacher=None, salt=None,
                 kd_weight=None, kd_share=None, loss_opts: LossOptions | None = None, guard: Guard = Guard()):
        self.mesh = mesh
        self.batch_sharding = sharding.batch_sharding(mesh)
        rep = sharding.replicated(mesh)
        self._train = jax.jit(make_train_step(model, tx, lr_schedule, pad_id, loss_opts, guard),
                              in_shardings=(state_shardings, self.batch_sharding),
                              out_shardings=(state_shardings, rep), donate_argnums=0)
        self._eval = jax.jit(make_eval_step(model, pad_id, loss_opts),
                             in_shardings=(state_shardings.params, self.batch_sharding), out_shardings=rep)
        self._kd_train = None
        if teacher is not None:
            step = make_kd_train_step(model, teacher.model, tx, lr_schedule, pad_id, salt, kd_weight, kd_share,
                                      loss_opts, guard)
            self._kd_train = jax.jit(step, in_shardings=(state_shardings, self.batch_sharding, teacher.shardings),
                                     out_shardings=(state_shardings, rep), donate_argnums=0)

    def kd_train(self, state, tokens, teacher_params):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            return self._kd_train(state, tokens, teacher_params)

    def drop_teacher(self) -> None:
        self._kd_train = None

    def lower_train(self, state, tokens):
        """The lowered teacher-free train step (for inspecting its cost)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            return self._train.lower(state, tokens)

    def lower_kd_train(self, state, tokens, teacher_params):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            return self._kd_train.lower(state, tokens, teacher_params)

    def train(self, state, tokens):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            return self._train(state, tokens)

    def eval(self, params, tokens):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            return self._eval(params, tokens)
