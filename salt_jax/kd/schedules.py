"""The KD phase of a run: the KD weight w(step), the KD share of sequences, and where KD ends.

`resolved` gives config.salt with its run-relative defaults as step counts (a
new value; salt_jax.config.resolved applies it once per run, and config.json
records it); `KDPhase.from_config` takes that resolved section and holds
everything the step and the loop ask about KD. w and the share are optax
schedules (callables of the step), evaluated in-graph from the step counter.
Per method (Rawat et al. 2024 for salt and rkd; the rest are ours):

    baseline / teacher   w = 0; no teacher
    rkd                  w = w0 for the whole run
    salt, step           w = w0 for step < n_KD, then 0
    salt, linear         w0 until n_KD, then linearly to 0 at n_KD + transition_steps
    salt, ratio          w = w0 on a share of the batch's sequences; the share is 1 until
                         n_KD, then decays linearly to 0 at n_KD + transition_steps
    salt, adaptive       w = w0 until the student's smoothed NTP loss reaches the teacher's
                         (decided in-graph, `adaptive_update`), at adaptive_max_steps at the latest
    salt_ds              as salt (the KD phase also draws its batches from the selected subset)

config.salt.weight_schedule shapes w inside the KD phase (MaxText's alpha
schedules; Peng et al. 2024 for with_lr); `transition` applies to `step` only:

    step      w0 until n_KD (then the transition above)
    linear    w0 at step 0, linearly to 0 at n_KD
    cosine    w0 at step 0, half a cosine to 0 at n_KD
    with_lr   the run's learning-rate curve compressed into [0, n_KD], scaled to go from w0 at its
              peak to 0 at n_KD: the KD weight warms up and decays with the learning rate

The temperature is a schedule too (config.salt.temperature_schedule): constant
tau, or linear / cosine from `temperature` at step 0 to `temperature_end` at
n_KD (for rkd, which distils for the whole run: at the run's last step). The
weight schedules apply to methods whose KD phase ends; rkd keeps w0 throughout
(`salt-wlr[kd_fraction=1.0]` is KD for the whole run with a weight that follows
the learning rate).

`KDPhase.end` is the one owner of the KD-phase boundary: the first step that
runs without the teacher. It is the scheduled end (where w, or for the ratio
transition the number of KD rows of a batch, is 0 for good) until the
adaptive switch moves it earlier (`KDPhase.switched_at`).

The adaptive switch lives here whole: its state in the train state
(`initial_kd_state`), its in-graph update after each KD step
(`adaptive_update`), the KD weight it zeroes (`KDPhase.row_weights`) and the
host's reading of it (`KDPhase.observe`).
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from salt_jax.kd import methods


SCHEDULES = ("step", "linear", "cosine", "with_lr")  # config.salt.weight_schedule
TEMPERATURE_SCHEDULES = ("constant", "linear", "cosine")  # config.salt.temperature_schedule
TRANSITIONS = ("step", "linear", "ratio")  # config.salt.transition: how KD ends after n_KD
SWITCHES = ("fixed", "adaptive")  # config.salt.switch: n_KD from the schedule, or when the student catches up


def kd_steps(salt: ml_collections.ConfigDict, total_steps: int) -> int:
    """n_KD in steps (config.salt.kd_steps, or kd_fraction of the run)."""
    return salt.kd_steps if salt.kd_steps >= 0 else int(round(salt.kd_fraction * total_steps))


def resolved(salt: ml_collections.ConfigDict, total_steps: int) -> ml_collections.ConfigDict:
    """A copy of config.salt with its run-relative defaults (-1) as step counts; `salt` is left as it is.

    kd_steps (-1: kd_fraction of the run), transition_steps (-1: half of n_KD),
    adaptive_min_steps (-1: 5% of the run), adaptive_max_steps (-1: half the
    run; 0: no limit, stored as total_steps + 1). Idempotent. A run applies it
    once (salt_jax.config.resolved), so config.json holds the numbers used.
    """
    out = copy.deepcopy(salt)
    n = kd_steps(salt, total_steps)
    with out.unlocked():
        out.kd_steps = n
        if salt.transition_steps < 0:
            out.transition_steps = max(1, int(round(n / 2)))
        if salt.adaptive_min_steps < 0:
            out.adaptive_min_steps = int(round(0.05 * total_steps))
        if salt.adaptive_max_steps < 0:
            out.adaptive_max_steps = int(round(0.5 * total_steps))
        elif salt.adaptive_max_steps == 0:
            out.adaptive_max_steps = total_steps + 1
    return out


def _require_resolved(salt: ml_collections.ConfigDict) -> None:
    """The phase reads step counts only: a config.salt still holding a run-relative default (-1) is a bug of the
    caller, which should pass `resolved(salt, total_steps)` (or salt_jax.config.resolved(config).salt)."""
    left = [f for f in ("kd_steps", "transition_steps", "adaptive_min_steps") if salt[f] < 0]
    left += ["adaptive_max_steps"] if salt.adaptive_max_steps <= 0 else []
    if left:
        raise ValueError(f"config.salt is not resolved ({', '.join(left)} still run-relative): pass "
                         "schedules.resolved(salt, total_steps)")


def _decay(kind: str, start: float, end: float, steps: int) -> optax.Schedule:
    """`start` at step 0 to `end` at `steps` (then `end`): linear or half a cosine (optax)."""
    if kind == "linear":
        return optax.linear_schedule(start, end, max(steps, 1))
    return optax.cosine_decay_schedule(start, max(steps, 1), alpha=end / start)  # (start > 0: w0 and tau are)


def _with_lr(n_kd: int, total_steps: int, lr: optax.Schedule, w0: float) -> optax.Schedule:
    """The run's learning-rate curve compressed into the KD phase: w0 at its peak, 0 where it ends.

    w(s) = w0 (lr(s T / n_KD) - lr(T)) / (max lr - lr(T)) for s < n_KD, then 0 (T: the run's length).
    With n_KD = T it is the learning rate's own shape (Peng et al. 2024's WSD pairing of the KD weight
    and the learning rate); with a shorter KD phase the warmup and the decay shrink in proportion.
    """
    n, total = max(n_kd, 1), max(total_steps, 1)
    curve = np.asarray(lr(jnp.arange(total + 1)), np.float64)
    end, top = float(curve[total]), float(curve.max())
    scale = w0 / (top - end) if top > end else 0.0
    inside = lambda s: jnp.clip((lr(s * (total / n)) - end) * scale, 0.0, w0)  # noqa: E731
    return optax.join_schedules([inside, optax.constant_schedule(0.0)], [n_kd])


def _weight(salt, method: methods.Method, total_steps: int, lr: optax.Schedule | None = None) -> optax.Schedule:
    """w(step) of a resolved config.salt: the weight of the KD term in (1 - w) * NTP + w * KD."""
    w0 = float(salt.kd_weight)
    if not method.teacher:
        return optax.constant_schedule(0.0)
    if not method.kd_ends:
        return optax.constant_schedule(w0)
    n = salt.kd_steps
    if salt.weight_schedule in ("linear", "cosine"):
        return optax.join_schedules([_decay(salt.weight_schedule, w0, 0.0, n), optax.constant_schedule(0.0)], [n])
    if salt.weight_schedule == "with_lr":
        if lr is None:
            raise ValueError("weight_schedule=with_lr needs the run's learning-rate schedule")
        return _with_lr(n, total_steps, lr, w0)
    if salt.transition == "linear":
        return optax.join_schedules([optax.constant_schedule(w0),
                                     optax.linear_schedule(w0, 0.0, salt.transition_steps)], [n])
    end = n + (salt.transition_steps if salt.transition == "ratio" else 0)
    return optax.join_schedules([optax.constant_schedule(w0), optax.constant_schedule(0.0)], [end])


def _temperature(salt, method: methods.Method, total_steps: int) -> optax.Schedule:
    """tau(step): constant, or linear / cosine from `temperature` to `temperature_end` at n_KD (rkd: at the
    run's end)."""
    tau = float(salt.temperature)
    if salt.temperature_schedule == "constant" or not method.teacher:
        return optax.constant_schedule(tau)
    n = salt.kd_steps if method.kd_ends else total_steps
    return _decay(salt.temperature_schedule, tau, float(salt.temperature_end), n)


def _share(salt, method: methods.Method) -> optax.Schedule:
    """Share of each batch's sequences that get the KD term (1 except for the ratio transition)."""
    if not method.kd_ends or salt.transition != "ratio":
        return optax.constant_schedule(1.0)
    return optax.join_schedules([optax.constant_schedule(1.0),
                                 optax.linear_schedule(1.0, 0.0, salt.transition_steps)], [salt.kd_steps])


def kd_rows(share: optax.Schedule, steps, batch_size: int):
    """Sequences of a batch that get the KD term at `steps`: round(share * batch), as the step computes it."""
    return jnp.round(share(steps) * batch_size)


def _scheduled_end(salt, method: methods.Method, share: optax.Schedule, total_steps: int, batch_size: int) -> int:
    """The first step without the teacher as scheduled (the adaptive switch may come earlier) of a resolved
    config.salt."""
    if not method.teacher:
        end = 0
    elif not method.kd_ends:
        end = total_steps
    elif salt.switch == "adaptive":
        end = salt.adaptive_max_steps
    elif salt.weight_schedule != "step":
        end = salt.kd_steps
    elif salt.transition == "ratio":  # KD ends with the last step that has a KD row, not when the share is 0
        steps = np.arange(salt.kd_steps, salt.kd_steps + salt.transition_steps + 1)
        has_rows = np.asarray(kd_rows(share, jnp.asarray(steps, jnp.int32), batch_size)) > 0
        end = int(steps[np.flatnonzero(has_rows)[-1]] + 1) if has_rows.any() else salt.kd_steps
    elif salt.transition == "linear":
        end = salt.kd_steps + salt.transition_steps
    else:
        end = salt.kd_steps
    return min(end, total_steps)


def scheduled_end(salt: ml_collections.ConfigDict, total_steps: int, batch_size: int) -> int:
    """`KDPhase.scheduled_end` without the rest of the phase (no learning-rate schedule needed): the KD steps
    a teacher cache must cover. `salt` is resolved (`resolved`)."""
    _require_resolved(salt)
    method = methods.method(salt.method)
    return _scheduled_end(salt, method, _share(salt, method), total_steps, batch_size)


def initial_kd_state() -> dict:
    """The KD state a train state carries (TrainState.kd, checkpointed): switch_step, the step at which the
    adaptive switch ended KD (-1: not yet); ema_student / ema_teacher, EMAs (undebiased) of the per-step NTP
    losses."""
    return {"switch_step": jnp.array(-1, jnp.int32), "ema_student": jnp.zeros((), jnp.float32),
            "ema_teacher": jnp.zeros((), jnp.float32)}


def adaptive_update(kd: dict, step, student_ntp, teacher_ntp, salt) -> dict:
    """The KD state after step `step` (in-graph): the loss EMAs updated, and the switch step recorded once the
    student has caught up (after adaptive_min_steps), or at adaptive_max_steps at the latest."""
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


@dataclasses.dataclass
class KDPhase:
    """The KD side of one run, resolved once: schedules, n_KD, and the phase's end.

    `end` is the first step that runs without the teacher (0 when the method
    has none, the run's length for rkd). `active(step)` says whether step
    `step` runs the teacher.
    """

    method: methods.Method  # the method's row of the method table
    salt: ml_collections.ConfigDict  # config.salt with the run-relative defaults resolved
    n_kd: int  # n_KD: steps at full KD weight
    weight: optax.Schedule  # w(step)
    temperature: optax.Schedule  # tau(step)
    share: optax.Schedule  # KD share of a batch's sequences at step
    scheduled_end: int  # where the schedule (or the adaptive upper bound) ends KD
    end: int  # the first step without the teacher: scheduled_end, or the adaptive switch's step
    _switch_seen: bool = dataclasses.field(default=False, init=False, repr=False)  # (observe said it once)

    @classmethod
    def from_config(cls, salt: ml_collections.ConfigDict, total_steps: int, batch_size: int,
                    switch_step: int = -1, lr: optax.Schedule | None = None) -> "KDPhase":
        """The phase of a run of `total_steps` steps; `switch_step` >= 0: the adaptive switch already fired there.

        `lr`, the run's learning-rate schedule, is needed by weight_schedule=with_lr only. `salt` is resolved
        (`resolved`; a run's config.salt is, by salt_jax.config.resolved).
        """
        _require_resolved(salt)
        method = methods.method(salt.method)
        weight, share = _weight(salt, method, total_steps, lr), _share(salt, method)
        end = _scheduled_end(salt, method, share, total_steps, batch_size)
        phase = cls(method, salt, salt.kd_steps, weight, _temperature(salt, method, total_steps), share, end, end)
        if switch_step >= 0:  # (resumed after the switch: it was observed and logged then)
            phase.switched_at(switch_step)
            phase._switch_seen = True
        return phase

    @property
    def adaptive(self) -> bool:
        return self.method.kd_ends and self.salt.switch == "adaptive"

    def active(self, step: int) -> bool:
        """Whether step `step` runs the teacher."""
        return step < self.end

    def switched_at(self, step: int) -> None:
        """The adaptive switch ended KD: steps from `step` on run without the teacher."""
        self.end = min(self.end, step)

    def observe(self, kd: dict) -> str | None:
        """The host side of the adaptive switch, after a KD step: `kd` is the train state's KD state
        (TrainState.kd). When the switch has fired (in-graph, `adaptive_update`) the phase ends there
        (`switched_at`) and the message to log is returned, once; else None. Reads one scalar off the
        device (a sync) only with switch=adaptive."""
        if not self.adaptive or self._switch_seen:
            return None
        switch_step = int(jax.device_get(kd["switch_step"]))
        if switch_step < 0:
            return None
        self.switched_at(switch_step)
        self._switch_seen = True
        return f"adaptive switch at step {switch_step}: {self.why_ended()}"

    def row_weights(self, step, kd: dict, targets):
        """(w per position before token selection, its batch mean), in-graph at step `step`: w(step) on the
        KD share of rows, else 0. With the adaptive switch w is w0 until kd["switch_step"] is set, then 0."""
        w = self.weight(step)
        if self.adaptive:
            w = jnp.where(kd["switch_step"] >= 0, 0.0, self.salt.kd_weight)
        batch = targets.shape[0]
        n_kd_rows = kd_rows(self.share, step, batch)
        in_share = (jnp.arange(batch) < n_kd_rows)[:, None]
        return jnp.broadcast_to(w * in_share.astype(jnp.float32), targets.shape), w * n_kd_rows / batch

    def why_ended(self) -> str:
        if self.adaptive:
            return ("reached config.salt.adaptive_max_steps" if self.end >= self.salt.adaptive_max_steps
                    else "the student caught up with the teacher")
        return "the schedule's KD weight reached 0"
