"""KD losses against NumPy float64; w(step) at every transition's boundaries; the adaptive rule."""

import jax.numpy as jnp
import numpy as np
import pytest

from salt_jax.kd import losses
from salt_jax.kd import schedules
from salt_jax.config import base_config, set_method
from salt_jax.train.state import initial_kd_state
from salt_jax.train.step import _adaptive_update

from reference import log_softmax


def _np_kd(t, s, tau, kind, k=0):
    t, s = np.asarray(t, np.float64) / tau, np.asarray(s, np.float64) / tau
    ls = log_softmax(s)
    if kind == "forward_kl":
        lt = log_softmax(t)
        return tau**2 * np.sum(np.exp(lt) * (lt - ls), -1)
    if kind == "reverse_kl":
        lt = log_softmax(t)
        return tau**2 * np.sum(np.exp(ls) * (ls - lt), -1)
    idx = np.argsort(-t, axis=-1)[..., :k]
    lt_k = log_softmax(np.take_along_axis(t, idx, -1))
    return tau**2 * np.sum(np.exp(lt_k) * (lt_k - np.take_along_axis(ls, idx, -1)), -1)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "topk_kl"])
def test_kd_loss_matches_float64(tau, kind):
    rng = np.random.default_rng(int(tau * 10))
    t = rng.normal(size=(2, 7, 33)).astype(np.float32) * 3
    s = rng.normal(size=(2, 7, 33)).astype(np.float32) * 3
    got = losses.kd_per_token(jnp.asarray(t), jnp.asarray(s), tau, kind, topk=5)
    np.testing.assert_allclose(np.asarray(got), _np_kd(t, s, tau, kind, 5), rtol=2e-5, atol=1e-6)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    z = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 10)), jnp.float32)
    assert float(jnp.abs(losses.kd_per_token(z, z, 2.0)).max()) < 1e-6
    assert float(losses.kd_per_token(z, z * 0.5, 2.0).min()) > 0


def test_mixture_is_convex_per_token_and_ignores_padding():
    ntp = jnp.array([[2.0, 4.0, 9.0]])
    kd = jnp.array([[1.0, 3.0, 7.0]])
    mask = jnp.array([[1, 1, 0]])
    w = jnp.array([[0.25, 0.0, 0.25]])
    stats = losses.mixture_stats(ntp, kd, w, mask)
    assert float(stats["loss_sum"]) == pytest.approx(0.75 * 2 + 0.25 * 1 + 4.0)
    assert float(stats["ntp_sum"]) == 6.0 and float(stats["kd_tokens"]) == 1.0


def test_teacher_selection_modes():
    t = jnp.log(jnp.array([[[0.6, 0.3, 0.1], [0.4, 0.35, 0.25]]]))
    targets = jnp.array([[1, 2]])
    assert losses.teacher_selection(t, targets, "topk", k=2).tolist() == [[True, False]]
    assert losses.teacher_selection(t, targets, "confidence", threshold=0.5).tolist() == [[True, False]]
    assert losses.teacher_selection(t, targets, "none").tolist() == [[True, True]]


def _salt(variant, steps=1000, **kw):
    c = base_config()
    c.train.steps = steps
    set_method(c, variant)
    for k, v in kw.items():
        c.salt[k] = v
    return c.salt


def test_schedules_at_boundaries():
    w0 = 0.5
    assert float(schedules.kd_weight_schedule(_salt("baseline"), 1000)(0)) == 0.0
    rkd = schedules.kd_weight_schedule(_salt("rkd"), 1000)
    assert [float(rkd(s)) for s in (0, 999)] == [w0, w0]
    assert schedules.kd_end_step(_salt("rkd"), 1000) == 1000

    step = _salt("salt", kd_steps=170)
    w = schedules.kd_weight_schedule(step, 1000)
    assert [float(w(s)) for s in (0, 169, 170, 171)] == [w0, w0, 0.0, 0.0]
    assert schedules.kd_end_step(step, 1000) == 170
    # default n_KD: 17.5% of the run
    assert schedules.kd_steps(_salt("salt"), 1000) == 175

    lin = _salt("salt-linear", kd_steps=100, transition_steps=40)
    w = schedules.kd_weight_schedule(lin, 1000)
    assert [float(w(s)) for s in (99, 100, 110, 120, 140, 141)] == pytest.approx([w0, w0, 0.375, 0.25, 0.0, 0.0])
    assert schedules.kd_end_step(lin, 1000) == 140

    ratio = _salt("salt-ratio", kd_steps=100, transition_steps=40)
    w, share = schedules.kd_weight_schedule(ratio, 1000), schedules.kd_share_schedule(ratio, 1000)
    assert [float(w(s)) for s in (0, 139, 140)] == [w0, w0, 0.0]
    assert [float(share(s)) for s in (99, 100, 110, 130, 140)] == pytest.approx([1.0, 1.0, 0.75, 0.25, 0.0])
    assert schedules.kd_end_step(ratio, 1000) == 140


def test_adaptive_switch_fires_when_the_student_overtakes():
    salt = _salt("salt-adaptive", adaptive_min_steps=3, adaptive_max_steps=-1, adaptive_ema=0.5)
    teacher = [3.0] * 12
    student = [6.0, 5.0, 4.5, 4.0, 3.5, 3.2, 3.0, 2.8, 2.7, 2.6, 2.5, 2.4]
    kd = initial_kd_state()
    switched = []
    for step, (s, t) in enumerate(zip(student, teacher)):
        kd = _adaptive_update(kd, jnp.int32(step), jnp.float32(s), jnp.float32(t), salt)
        switched.append(int(kd["switch_step"]))
    # NumPy replay of the debiased EMAs: the first step (>= min) where ema_s <= ema_t
    es = et = 0.0
    expect = -1
    for step, (s, t) in enumerate(zip(student, teacher)):
        es, et = 0.5 * es + 0.5 * s, 0.5 * et + 0.5 * t
        if expect < 0 and step + 1 >= 3 and es / (1 - 0.5 ** (step + 1)) <= et / (1 - 0.5 ** (step + 1)):
            expect = step + 1
    assert expect == 9  # student's smoothed loss crosses 3.0 only after several steps below it
    assert switched.index(expect) == expect - 1 and all(v == -1 for v in switched[:expect - 1])
    assert all(v == expect for v in switched[expect - 1:])  # recorded once, never moves


def test_adaptive_switch_respects_min_and_max():
    salt = _salt("salt-adaptive", adaptive_min_steps=5, adaptive_max_steps=7, adaptive_ema=0.0)
    kd = initial_kd_state()
    for step in range(4):  # student already better, but before min_steps
        kd = _adaptive_update(kd, jnp.int32(step), jnp.float32(1.0), jnp.float32(2.0), salt)
    assert int(kd["switch_step"]) == -1
    kd = _adaptive_update(kd, jnp.int32(4), jnp.float32(1.0), jnp.float32(2.0), salt)
    assert int(kd["switch_step"]) == 5
    kd = initial_kd_state()
    for step in range(7):  # student never catches up: forced at max
        kd = _adaptive_update(kd, jnp.int32(step), jnp.float32(5.0), jnp.float32(2.0), salt)
    assert int(kd["switch_step"]) == 7
