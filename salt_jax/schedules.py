"""The KD weight w(step) and, for the "ratio" transition, the KD share of sequences.

Both are optax schedules (callables of the step), so they compose with optax's
tools and are evaluated in-graph from the step counter. See salt-method.md:

    baseline / teacher   w = 0
    rkd                  w = w0 for the whole run
    salt, step           w = w0 for step < n_KD, then 0
    salt, linear         w0 until n_KD, then linearly to 0 at n_KD + transition_steps
    salt, ratio          w = w0 on a share of the batch's sequences; the share is 1 until
                         n_KD, then decays linearly to 0 at n_KD + transition_steps
    salt_ds              as salt (the KD phase also draws its batches from the selected subset)
"""

from __future__ import annotations

import ml_collections
import optax


def kd_steps(salt: ml_collections.ConfigDict, total_steps: int) -> int:
    """n_KD in steps (config.salt.kd_steps, or kd_fraction of the run)."""
    return salt.kd_steps if salt.kd_steps >= 0 else int(round(salt.kd_fraction * total_steps))


def resolve(salt: ml_collections.ConfigDict, total_steps: int) -> None:
    """Replaces the run-relative defaults (-1) of config.salt by step counts, in place.

    kd_steps (-1: kd_fraction of the run), transition_steps (-1: half of n_KD),
    adaptive_min_steps (-1: 5% of the run), adaptive_max_steps (-1: half the
    run; 0: no limit, stored as total_steps + 1). Idempotent; runs call it once
    so config.json holds the numbers actually used.
    """
    n = kd_steps(salt, total_steps)
    salt.kd_steps = n
    if salt.transition_steps < 0:
        salt.transition_steps = max(1, int(round(n / 2)))
    if salt.adaptive_min_steps < 0:
        salt.adaptive_min_steps = int(round(0.05 * total_steps))
    if salt.adaptive_max_steps < 0:
        salt.adaptive_max_steps = int(round(0.5 * total_steps))
    elif salt.adaptive_max_steps == 0:
        salt.adaptive_max_steps = total_steps + 1


def _resolved(salt, total_steps):
    import copy

    out = copy.deepcopy(salt)
    resolve(out, total_steps)
    return out


def kd_weight_schedule(salt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """w(step): the weight of the KD term in (1 - w) * NTP + w * KD."""
    salt = _resolved(salt, total_steps)
    w0 = float(salt.kd_weight)
    if salt.method in ("baseline", "teacher"):
        return optax.constant_schedule(0.0)
    if salt.method == "rkd":
        return optax.constant_schedule(w0)
    n = kd_steps(salt, total_steps)
    if salt.transition == "linear":
        return optax.join_schedules([optax.constant_schedule(w0),
                                     optax.linear_schedule(w0, 0.0, salt.transition_steps)], [n])
    end = n + (salt.transition_steps if salt.transition == "ratio" else 0)
    return optax.join_schedules([optax.constant_schedule(w0), optax.constant_schedule(0.0)], [end])


def kd_share_schedule(salt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Share of each batch's sequences that get the KD term (1 except for the ratio transition)."""
    salt = _resolved(salt, total_steps)
    if salt.method not in ("salt", "salt_ds") or salt.transition != "ratio":
        return optax.constant_schedule(1.0)
    return optax.join_schedules([optax.constant_schedule(1.0),
                                 optax.linear_schedule(1.0, 0.0, salt.transition_steps)],
                                [kd_steps(salt, total_steps)])


def kd_end_step(salt: ml_collections.ConfigDict, total_steps: int) -> int:
    """First step from which w is 0 for good (total_steps if it never is within the run).

    From this step on the run uses the compiled step without the teacher. For
    the adaptive switch this is the upper bound; the actual switch is decided
    in the step.
    """
    salt = _resolved(salt, total_steps)
    if salt.method in ("baseline", "teacher"):
        return 0
    if salt.method == "rkd":
        return total_steps
    if salt.switch == "adaptive":
        return min(salt.adaptive_max_steps, total_steps)
    n = kd_steps(salt, total_steps)
    return min(n + (salt.transition_steps if salt.transition in ("linear", "ratio") else 0), total_steps)
