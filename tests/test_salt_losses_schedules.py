"""KD losses against NumPy float64; w(step) at every transition's boundaries; the adaptive rule."""

import jax.numpy as jnp
import numpy as np
import pytest

from salt_jax.config import base_config, set_method
from salt_jax.kd import losses, schedules, selection
from salt_jax.kd.chunked_loss import LossOptions, chunked_loss
from salt_jax.kd.schedules import adaptive_update, initial_kd_state

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
    got = losses.full_kd_per_token(jnp.asarray(s), jnp.asarray(t), tau, kind, topk=5)
    np.testing.assert_allclose(np.asarray(got), _np_kd(t, s, tau, kind, 5), rtol=2e-5, atol=1e-6)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    z = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 10)), jnp.float32)
    assert float(jnp.abs(losses.full_kd_per_token(z, z, 2.0)).max()) < 1e-6
    assert float(losses.full_kd_per_token(z * 0.5, z, 2.0).min()) > 0


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


def _phase(salt, steps=1000, batch=16):
    return schedules.KDPhase.from_config(schedules.resolved(salt, steps), steps, batch)


def test_schedules_at_boundaries():
    w0 = 0.5
    base = _phase(_salt("baseline"))
    assert float(base.weight(0)) == 0.0 and base.end == 0 and not base.active(0)
    rkd = _phase(_salt("rkd"))
    assert [float(rkd.weight(s)) for s in (0, 999)] == [w0, w0]
    assert rkd.end == 1000 and rkd.active(999)

    step = _phase(_salt("salt", kd_steps=170))
    assert [float(step.weight(s)) for s in (0, 169, 170, 171)] == [w0, w0, 0.0, 0.0]
    assert step.end == 170 and step.active(169) and not step.active(170)
    # default n_KD: 17.5% of the run
    assert schedules.kd_steps(_salt("salt"), 1000) == 175 and _phase(_salt("salt")).n_kd == 175

    lin = _phase(_salt("salt-linear", kd_steps=100, transition_steps=40))
    assert [float(lin.weight(s)) for s in (99, 100, 110, 120, 140, 141)] == pytest.approx(
        [w0, w0, 0.375, 0.25, 0.0, 0.0])
    assert lin.end == 140

    ratio = _phase(_salt("salt-ratio", kd_steps=100, transition_steps=40), batch=16)
    assert [float(ratio.weight(s)) for s in (0, 139, 140)] == [w0, w0, 0.0]
    assert [float(ratio.share(s)) for s in (99, 100, 110, 130, 140)] == pytest.approx([1.0, 1.0, 0.75, 0.25, 0.0])
    # the teacher stops with the last step that has a KD row: round(16 * 0.05) = 1 at step 138, 0.4 -> 0 at 139
    assert [int(schedules.kd_rows(ratio.share, s, 16)) for s in (136, 138, 139)] == [2, 1, 0]
    assert ratio.end == 139


def test_a_kd_phase_of_zero_steps_never_loads_the_teacher():
    """n_KD = 0: no step runs the teacher, so no teacher is loaded and SALT_DS scores nothing."""
    for variant in ("salt", "salt_ds"):
        phase = _phase(_salt(variant, kd_steps=0))
        assert phase.end == 0 and not phase.active(0) and phase.method.teacher


def test_the_adaptive_switch_moves_the_end_earlier():
    phase = _phase(_salt("salt-adaptive", adaptive_max_steps=600))
    assert phase.adaptive and phase.end == 600
    phase.switched_at(321)
    assert phase.end == 321 and not phase.active(321) and phase.active(320)
    assert _phase(_salt("salt-adaptive", adaptive_max_steps=600), batch=16).end == 600
    resumed = schedules.KDPhase.from_config(schedules.resolved(_salt("salt-adaptive", adaptive_max_steps=600), 1000),
                                            1000, 16, switch_step=250)
    assert resumed.end == 250


def test_the_host_observes_the_switch_once_from_the_kd_state():
    """KDPhase.observe (the loop's reading of the in-graph switch): None until switch_step is set, then the
    phase ends there and the message comes once; a resumed phase and a non-adaptive one never report it."""
    phase = _phase(_salt("salt-adaptive", adaptive_max_steps=600))
    kd = initial_kd_state()
    assert phase.observe(kd) is None and phase.end == 600
    kd["switch_step"] = jnp.array(321, jnp.int32)
    assert phase.observe(kd) == "adaptive switch at step 321: the student caught up with the teacher"
    assert phase.end == 321 and phase.observe(kd) is None
    resumed = schedules.KDPhase.from_config(schedules.resolved(_salt("salt-adaptive", adaptive_max_steps=600), 1000),
                                            1000, 16, switch_step=250)
    assert resumed.observe(kd) is None and resumed.end == 250
    assert _phase(_salt("salt")).observe(kd) is None


def test_one_top_k_rule_for_ties_in_token_selection_and_salt_ds():
    """Entries tied with the target count in its favour: with logits [3, 2, 2, 1] the target at index 2
    is in the top-2 (one entry is strictly larger), though lax.top_k's index order would drop it."""
    logits = jnp.array([[[3.0, 2.0, 2.0, 1.0]]])
    target = jnp.array([[2]])
    assert int(losses.target_rank(logits, target)[0, 0]) == 1
    assert losses.teacher_selection(logits, target, "topk", k=2).tolist() == [[True]]
    assert losses.teacher_selection(logits, target, "topk", k=1).tolist() == [[False]]
    scores = selection.sequence_scores(logits, target, jnp.ones((1, 1)), k=2)
    assert float(scores["topk_fraction"][0]) == 1.0
    assert float(selection.sequence_scores(logits, target, jnp.ones((1, 1)), k=1)["topk_fraction"][0]) == 0.0
    # the chunked loss selects the same tokens: KD applies at the tied target for k=2, not for k=1
    h = jnp.eye(4)[None, :1]  # hidden = e_0, so logits = the first row of the projection
    w_t = jnp.array([[3.0, 2.0, 2.0, 1.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    for k, want in ((2, 1.0), (1, 0.0)):
        opts = LossOptions(chunk=1, token_select="topk", token_select_k=k)
        stats = chunked_loss(h, w_t, target, jnp.ones((1, 1)), opts, h, w_t, jnp.full((1, 1), 0.5))
        assert float(stats["kd_tokens"]) == want


def test_adaptive_switch_fires_when_the_student_overtakes():
    salt = _salt("salt-adaptive", adaptive_min_steps=3, adaptive_max_steps=-1, adaptive_ema=0.5)
    teacher = [3.0] * 12
    student = [6.0, 5.0, 4.5, 4.0, 3.5, 3.2, 3.0, 2.8, 2.7, 2.6, 2.5, 2.4]
    kd = initial_kd_state()
    switched = []
    for step, (s, t) in enumerate(zip(student, teacher)):
        kd = adaptive_update(kd, jnp.int32(step), jnp.float32(s), jnp.float32(t), salt)
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
        kd = adaptive_update(kd, jnp.int32(step), jnp.float32(1.0), jnp.float32(2.0), salt)
    assert int(kd["switch_step"]) == -1
    kd = adaptive_update(kd, jnp.int32(4), jnp.float32(1.0), jnp.float32(2.0), salt)
    assert int(kd["switch_step"]) == 5
    kd = initial_kd_state()
    for step in range(7):  # student never catches up: forced at max
        kd = adaptive_update(kd, jnp.int32(step), jnp.float32(5.0), jnp.float32(2.0), salt)
    assert int(kd["switch_step"]) == 7
