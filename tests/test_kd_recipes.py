"""KD recipes beyond the paper: weight and temperature schedules, sparse (cached) teacher targets, SALT_DS
rules, and the experiment's method overrides. Values against hand-computed numbers and NumPy float64."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from salt_jax.config import base_config, set_method, validate
from salt_jax.errors import UserError
from salt_jax.kd import losses, schedules, selection, sparse
from salt_jax.kd.chunked_loss import LossOptions, chunked_loss
from salt_jax.train import optim

from conftest import REPO
from reference import log_softmax


def _salt(variant, steps=1000, **kw):
    c = base_config()
    c.train.steps = steps
    set_method(c, variant)
    for k, v in kw.items():
        c.salt[k] = v
    return c


def _phase(c, batch=16):
    return schedules.KDPhase.from_config(schedules.resolved(c.salt, c.train.steps), c.train.steps, batch,
                                         lr=optim.lr_schedule(c.optim, c.train.steps))


def _at(schedule, steps):
    return [float(schedule(s)) for s in steps]


def test_weight_schedules_at_their_boundaries():
    lin = _phase(_salt("salt-wlinear", kd_steps=100))
    assert _at(lin.weight, (0, 50, 99, 100, 101)) == pytest.approx([0.5, 0.25, 0.005, 0.0, 0.0], abs=1e-7)
    assert lin.end == 100 and lin.active(99) and not lin.active(100)
    cos = _phase(_salt("salt-wcosine", kd_steps=100))
    assert _at(cos.weight, (0, 25, 50, 100, 500)) == pytest.approx(
        [0.5, 0.25 * (1 + math.cos(math.pi / 4)), 0.25, 0.0, 0.0], abs=1e-6)
    assert cos.end == 100
    # with_lr: the run's learning rate (warmup 20 to 3e-3, cosine to 3e-4 at step 1000) squeezed 10x into
    # n_KD = 100 steps and mapped from [3e-4, 3e-3] onto [0, 0.5]: step s reads lr(10 s)
    c = _salt("salt-wlr", kd_steps=100)
    c.optim.warmup_steps, c.optim.learning_rate, c.optim.final_lr_fraction = 20, 3e-3, 0.1
    wlr = _phase(c)

    def lr(step):  # optax's warmup-cosine, by hand
        if step < 20:
            return 3e-3 * step / 20
        return 3e-4 + 2.7e-3 * 0.5 * (1 + math.cos(math.pi * (step - 20) / 980))

    want = [0.5 * max(lr(10 * s) - 3e-4, 0) / 2.7e-3 for s in (1, 2, 50, 99)]
    assert _at(wlr.weight, (0, 1, 2, 50, 99, 100)) == pytest.approx([0.0, *want, 0.0], abs=1e-6)
    assert want[1] == pytest.approx(0.5) and wlr.end == 100
    # with n_KD = the run, w is the learning rate's own shape
    full = _salt("salt-wlr", kd_steps=1000)
    assert _at(_phase(full).weight, (10, 500)) == pytest.approx(
        [0.5 * max(lr(10) - 3e-4, 0) / 2.7e-3, 0.5 * (lr(500) - 3e-4) / 2.7e-3], abs=1e-6)


def test_temperature_schedules_at_their_boundaries():
    assert _at(_phase(_salt("salt", kd_steps=100, temperature=2.0)).temperature, (0, 100)) == [2.0, 2.0]
    lin = _phase(_salt("salt", kd_steps=100, temperature=2.0, temperature_schedule="linear", temperature_end=1.0))
    assert _at(lin.temperature, (0, 50, 100, 200)) == pytest.approx([2.0, 1.5, 1.0, 1.0])
    cos = _phase(_salt("salt", kd_steps=100, temperature=2.0, temperature_schedule="cosine", temperature_end=1.0))
    assert _at(cos.temperature, (0, 25, 50, 100)) == pytest.approx([2.0, 1 + (1 + math.cos(math.pi / 4)) / 2,
                                                                    1.5, 1.0], abs=1e-6)


def test_the_step_reads_the_temperature_in_graph():
    """The dense objective at step 50 of a 2 -> 1 linear temperature uses tau = 1.5."""
    from salt_jax.kd.objective import DenseLoss
    from salt_jax.train.step import make_objective
    from salt_jax.kd.schedules import initial_kd_state

    c = _salt("salt", kd_steps=100, temperature=2.0, temperature_schedule="linear", temperature_end=1.0)
    phase = _phase(c, batch=2)
    rng = np.random.default_rng(0)
    s_logits = jnp.asarray(rng.normal(size=(2, 5, 11)), jnp.float32)
    t_logits = jnp.asarray(rng.normal(size=(2, 5, 11)) * 2, jnp.float32)

    class Fixed:  # a "model" that returns fixed logits
        def __init__(self, z):
            self.z = z

        def apply(self, variables, inputs):
            return self.z * variables["params"]

    class State:
        step = jnp.int32(50)
        kd = initial_kd_state()

    tokens = jnp.asarray(rng.integers(1, 11, (2, 6)), jnp.int32)
    objective = make_objective(Fixed(s_logits), DenseLoss(c.salt), pad_id=0, teacher_model=Fixed(t_logits),
                               phase=phase)
    _, stats = objective(jnp.float32(1.0), jnp.float32(1.0), State(), tokens)
    mask = np.asarray(tokens[:, 1:] != 0)
    want = np.sum(_np_full_kd(t_logits, s_logits, 1.5) * mask)
    assert float(stats["kd_sum"]) == pytest.approx(want, rel=1e-5)


def _np_full_kd(t, s, tau):
    lt, ls = log_softmax(np.asarray(t, np.float64) / tau), log_softmax(np.asarray(s, np.float64) / tau)
    return tau ** 2 * np.sum(np.exp(lt) * (lt - ls), -1)


def _np_sparse_kd(s, ids, logp, other, tau, kind):
    """Float64 value per position: the target distribution over the slots (and bucket) by the definitions."""
    ls = log_softmax(np.asarray(s, np.float64) / tau)
    logp, other = np.asarray(logp, np.float64), np.asarray(other, np.float64)
    ls_ids = np.take_along_axis(ls, ids, -1)
    if kind == "topk":
        r = np.exp(logp) / np.exp(logp).sum(-1, keepdims=True)
        return tau ** 2 * np.sum(r * (np.log(r) - ls_ids), -1)
    if kind == "sampled":
        return tau ** 2 * np.mean(logp - ls_ids, -1)
    in_top = np.zeros(ls.shape, bool)
    np.put_along_axis(in_top, ids, True, -1)
    q_other = np.sum(np.where(in_top, 0.0, np.exp(ls)), -1)
    r_other = np.where(np.isfinite(other), np.exp(other), 0.0)
    bucket = np.where(r_other > 0, r_other * (np.where(r_other > 0, other, 0) - np.log(q_other + 1e-300)), 0.0)
    return tau ** 2 * (np.sum(np.exp(logp) * (logp - ls_ids), -1) + bucket)


def _logits(seed, shape=(2, 3, 11), scale=2.0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("kind", ["topk", "topk_other"])
def test_sparse_kd_with_the_whole_vocabulary_is_full_kd(tau, kind):
    t, s = _logits(0), _logits(1)
    y = jnp.asarray(np.random.default_rng(2).integers(0, 11, (2, 3)))
    targets = sparse.from_logits(jnp.asarray(t), y, 11, kind, tau)
    got = sparse.sparse_kd_per_token(jnp.asarray(s), targets, tau, kind)
    np.testing.assert_allclose(np.asarray(got), _np_full_kd(t, s, tau), rtol=2e-5, atol=1e-6)
    assert float(jnp.max(targets.other)) == -np.inf  # nothing is left outside the top V
    np.testing.assert_allclose(np.asarray(targets.target_logp),
                               np.take_along_axis(log_softmax(t.astype(np.float64)), np.asarray(y)[..., None],
                                                  -1)[..., 0], rtol=1e-6)


@pytest.mark.parametrize("k,tau", [(4, 1.5), (4, 1.0), (11, 1.0)])
@pytest.mark.parametrize("kind", sparse.KINDS)
def test_sparse_kd_value_and_gradient_match_float64(kind, k, tau):
    """Every implementation (autodiff reference, the earlier closed form, the fused CE + KD of the losses, at
    tau = 1 also with the CE's softmax reused) against a float64 value and its central differences, with
    k = 4 of 11 ids (the bucket holds real mass) and k = V (no bucket: r_o = 0, c_o = -inf), tied logits."""
    t, s = _logits(3), _logits(4)
    t[0, 0, :3] = t[0, 0, 0]  # ties in the teacher's top k and in the student's logits
    s[1, 1, 2:5] = s[1, 1, 2]
    y = jnp.asarray(np.random.default_rng(5).integers(0, 11, (2, 3)))
    targets = sparse.from_logits(jnp.asarray(t), y, k, kind, tau, jax.random.key(0))
    ids, logp, other = (np.asarray(a) for a in targets[:3])
    want = _np_sparse_kd(s, ids, logp, other, tau, kind)
    eps, grad = 1e-6, np.zeros(s.shape)
    s64 = s.astype(np.float64)
    for i in np.ndindex(s.shape):
        up, down = s64.copy(), s64.copy()
        up[i] += eps
        down[i] -= eps
        grad[i] = (_np_sparse_kd(up, ids, logp, other, tau, kind)[i[:-1]]
                   - _np_sparse_kd(down, ids, logp, other, tau, kind)[i[:-1]]) / (2 * eps)
    ce_w = jnp.asarray(np.random.default_rng(6).random((2, 3)), jnp.float32)  # the CE's share, as in a chunk
    ce64 = -np.take_along_axis(log_softmax(s64), np.asarray(y)[..., None], -1)[..., 0]
    ce_grad = np.exp(log_softmax(s64)) - np.eye(11)[np.asarray(y)]
    value, closed = sparse.sparse_kd_value_and_grad(jnp.asarray(s), targets, tau, kind)
    auto = jax.grad(lambda z: jnp.sum(sparse.sparse_kd_per_token(z, targets, tau, kind)))(jnp.asarray(s))
    fused = [sparse.ce_kd_value_and_grad(jnp.asarray(s), y, targets, tau, kind, ce_w, jnp.ones((2, 3)), unit)
             for unit in ([False, True] if tau == 1 else [False])]
    dense = jax.grad(lambda z: jnp.sum(sparse.ce_and_kd(z, y, targets, tau, kind, tau == 1)[1]))(jnp.asarray(s))
    for got in (value, sparse.sparse_kd_per_token(jnp.asarray(s), targets, tau, kind), *(f[1] for f in fused),
                sparse.ce_and_kd(jnp.asarray(s), y, targets, tau, kind)[1]):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    for got in (closed, auto, dense, *(f[2] - ce_w[..., None] * ce_grad for f in fused)):
        np.testing.assert_allclose(np.asarray(got), grad, atol=2e-5)
    for f in fused:
        np.testing.assert_allclose(np.asarray(f[0]), ce64, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(f[2]), np.asarray(closed + ce_w[..., None] * ce_grad), atol=3e-7)


def test_the_fused_bucket_is_exact_for_a_confident_student():
    """topk_other at a 2048 vocabulary with the student's mass outside the top 16 from 0.9 down to 1e-8 (where
    Z - Z_top alone would lose it): value and gradient as the float64 definitions, like the earlier closed form."""
    rng = np.random.default_rng(11)
    v, k = 2048, 16
    t = rng.normal(size=(1, 5, v)).astype(np.float32) * 2
    y = jnp.zeros((1, 5), jnp.int32)
    targets = sparse.from_logits(jnp.asarray(t), y, k, "topk_other", 1.0)
    ids = np.asarray(targets.ids)
    s = rng.normal(size=(1, 5, v)).astype(np.float32)
    for i, boost in enumerate([1, 6, 12, 18, 24]):
        np.put_along_axis(s[0, i], ids[0, i], np.take_along_axis(s[0, i], ids[0, i], -1) + boost, -1)
    logp, other = np.asarray(targets.logp), np.asarray(targets.other)
    want = _np_sparse_kd(s, ids, logp, other, 1.0, "topk_other")
    ls = log_softmax(s.astype(np.float64))
    in_top = np.zeros(ls.shape, bool)
    np.put_along_axis(in_top, ids, True, -1)
    q, q_o, r_o = np.exp(ls), np.sum(np.where(in_top, 0, np.exp(ls)), -1), np.exp(other.astype(np.float64))
    r_v = np.zeros(ls.shape)
    np.put_along_axis(r_v, ids, np.exp(logp.astype(np.float64)), -1)
    grad = q * (np.exp(logp.astype(np.float64)).sum(-1) + r_o)[..., None] - r_v - np.where(
        in_top, 0, (r_o / q_o)[..., None] * q)
    zero = jnp.zeros((1, 5))
    _, kd, d = sparse.ce_kd_value_and_grad(jnp.asarray(s), y, targets, 1.0, "topk_other", zero, zero + 1, True)
    np.testing.assert_allclose(np.asarray(kd), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(d), grad, atol=1e-6)
    assert q_o[0, -1] < 1e-7


def test_sampled_targets_are_unbiased():
    """The sampled target's expectation is the tempered teacher (so is the gradient's, q - p): 20000 draws
    at one position, each id's frequency within 4 standard errors of p."""
    t = _logits(6, (1, 1, 11))
    targets = sparse.from_logits(jnp.asarray(t), jnp.zeros((1, 1), jnp.int32), 20000, "sampled", 2.0,
                                 jax.random.key(1))
    freq = np.bincount(np.asarray(targets.ids).ravel(), minlength=11) / 20000
    p = np.exp(log_softmax(t[0, 0].astype(np.float64) / 2.0))
    assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / 20000) + 1e-12)
    np.testing.assert_allclose(np.asarray(targets.logp)[0, 0], np.log(p)[np.asarray(targets.ids)[0, 0]],
                               rtol=1e-5)


@pytest.mark.parametrize("k,tau", [(5, 2.0), (13, 1.0)])
@pytest.mark.parametrize("kind", sparse.KINDS)
def test_the_chunked_loss_from_sparse_targets_equals_the_dense_one(kind, k, tau):
    """Same sums and gradients (hidden states and head) from cached targets, chunk by chunk (fused) or at once
    (the autodiff reference, and the dense loss's fused CE + KD), with pads, at k < V and k = V."""
    rng = np.random.default_rng(7)
    b, t, d, v = 2, 7, 6, 13
    h = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, v)) * 0.7, jnp.float32)
    y = jnp.asarray(rng.integers(0, v, (b, t)))
    mask = jnp.asarray(rng.random((b, t)) > 0.2, jnp.float32)
    kw = jnp.full((b, t), 0.4)
    targets = sparse.from_logits(jnp.asarray(_logits(8, (b, t, v))), y, k, kind, tau, jax.random.key(2))

    def dense(h, w, fused=False):
        logits = jnp.einsum("btd,dv->btv", h, w)
        ce, kd = (sparse.ce_and_kd(logits, y, targets, tau, kind, tau == 1) if fused else
                  (losses.token_ce(logits, y), sparse.sparse_kd_per_token(logits, targets, tau, kind)))
        stats = losses.mixture_stats(ce, kd, kw, mask)
        return stats["loss_sum"], stats

    def chunked(h, w):
        stats = chunked_loss(h, w, y, mask, LossOptions(chunk=3, sparse=kind), targets, None, kw, tau)
        return stats["loss_sum"], stats

    (d_val, d_stats), d_grads = jax.value_and_grad(dense, argnums=(0, 1), has_aux=True)(h, w)
    (_, c_stats), _ = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(h, w)
    assert float(c_stats["teacher_ntp_sum"]) == pytest.approx(-float(jnp.sum(targets.target_logp * mask)), rel=1e-6)
    for fn in (chunked, lambda h, w: dense(h, w, True)):
        (c_val, c_stats), c_grads = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(h, w)
        for key in ("loss_sum", "kd_sum", "ntp_sum", "kd_weight_sum"):
            assert float(c_stats[key]) == pytest.approx(float(d_stats[key]), rel=1e-5)
        for a, e in zip(c_grads, d_grads):
            np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-4, atol=1e-5)


def test_difference_and_loss_rules_against_numpy():
    rng = np.random.default_rng(9)
    z_t, z_r = rng.normal(size=(4, 6, 9)) * 2, rng.normal(size=(4, 6, 9))
    y = rng.integers(0, 9, (4, 6))
    mask = rng.random((4, 6)) > 0.25
    mask[:, 0] = True
    got = {name: {k: np.asarray(v) for k, v in selection.sequence_scores(
        jnp.asarray(z, jnp.float32), jnp.asarray(y), jnp.asarray(mask), 3).items()} for name, z in
        (("teacher", z_t), ("reference", z_r))}

    def mean_nll(z):
        nll = -np.take_along_axis(log_softmax(z), y[..., None], -1)[..., 0]
        return np.sum(nll * mask, -1) / mask.sum(-1)

    np.testing.assert_allclose(selection.rule_scores("loss", got["teacher"]), mean_nll(z_t), rtol=1e-5)
    np.testing.assert_allclose(selection.rule_scores("difference", got["teacher"], got["reference"]),
                               mean_nll(z_r) - mean_nll(z_t), rtol=1e-4, atol=1e-5)
    assert selection.rule_scores("median_topk", got["teacher"]) is got["teacher"]["score"]


@pytest.mark.parametrize("field,value,match", [
    ("token_select", "topk", "teacher_logits=cache needs token_select='none'"),
    ("temperature_schedule", "linear", "teacher_logits=cache needs temperature_schedule='constant'"),
    ("cache_k", 5000, "config.salt.cache_k=5000"),
])
def test_cached_logits_refuse_what_the_cache_cannot_give(field, value, match):
    c = _salt("salt-cached", teacher="/t")
    c.salt[field] = value
    with pytest.raises(UserError, match=match):
        validate(c)


def test_config_refuses_unknown_schedules_and_a_missing_reference():
    for field, value, match in (("weight_schedule", "exp", "weight_schedule='exp'"),
                                ("transition", "linear", "applies to weight_schedule='step' only")):
        c = _salt("salt-wcosine", teacher="/t")
        c.salt[field] = value
        with pytest.raises(UserError, match=match):
            validate(c)
    with pytest.raises(UserError, match="ds_reference is empty"):
        validate(_salt("salt_ds-difference", teacher="/t"))


def test_experiment_methods_set_any_field_and_name_extra_teachers():
    import ml_collections

    from salt_jax.experiment import pipeline
    from salt_jax.recipes import tiny_run

    exp = ml_collections.ConfigDict({"student": tiny_run(), "progress": False,
                                     "teachers": {"small": tiny_run("teacher")}})
    c = pipeline.student_config(exp, "baseline[train.steps=28]", 1, "/t", 1e-3, "/exp")
    assert (c.train.steps, c.salt.method, c.salt.teacher) == (28, "baseline", "")  # (no teacher: carries none)
    c = pipeline.student_config(exp, "salt_ds-difference[teacher=small,ds_reference=small]", 0, "/t", 1e-3, "/exp")
    assert c.salt.teacher == c.salt.ds_reference == os.path.join("/exp", "teacher-small")
    assert c.salt.ds_rule == "difference"
    with pytest.raises(UserError, match="sets train.nope"):
        pipeline.student_config(exp, "salt[train.nope=1]", 0, "/t", 1e-3)


def test_a_cached_logits_run_matches_the_online_run_and_its_cache_resumes_after_a_kill(salt_reference, teacher_dir,
                                                                                     cache_dir, tmp_path):
    """salt_run.RUN from cached targets holding the whole vocabulary in float32: the first run is killed
    (SIGKILL) after the cache's step 3 is written; the same command resumes the build at step 4 and is
    killed again after training step 5 (the targets read ahead with the batches); the third resumes from
    step 3 and trains to the online reference run's losses and parameters (no teacher forward in its KD
    step)."""
    import salt_run
    from salt_jax.train.metrics import read_metrics

    workdir = str(tmp_path / "cached")
    flags = ["--config.salt.teacher_logits=cache", "--config.salt.cache_targets=topk_other",
             "--config.salt.cache_k=259", "--config.salt.cache_dtype=float32"]
    killed = salt_run.cli(workdir, cache_dir, teacher_dir, flags + ["--config.train.debug_kill=cache:3"])
    assert killed.returncode == -9, killed.stdout[-2000:]
    mid = salt_run.cli(workdir, cache_dir, teacher_dir, flags + ["--config.train.debug_kill=step:5"])
    assert mid.returncode == -9, mid.stdout[-2000:]
    assert "teacher cache: resuming at step 4 of 7" in mid.stdout
    out = salt_run.cli(workdir, cache_dir, teacher_dir, flags)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "resuming" in out.stdout and "from step 3" in out.stdout
    info = __import__("json").load(open(os.path.join(workdir, "teacher_cache.json")))
    # the command line names the very cache the run built (and finds it complete)
    cli = subprocess.run([sys.executable, "-m", "salt_jax.teacher_cache",
                          f"--config={os.path.join(REPO, 'configs', 'test_tiny.py')}:salt",
                          f"--config.salt.teacher={teacher_dir}",
                          *[f"--config.{k}={v}" for k, v in salt_run.RUN.items()], *flags],
                         cwd=REPO, env=dict(os.environ, SALT_JAX_CACHE=cache_dir), capture_output=True, text=True)
    assert cli.returncode == 0 and f"teacher cache: {info['directory']}" in cli.stdout, cli.stderr[-2000:]
    assert info["steps"] == 7 and info["k"] == 259 and info["bytes_per_token"] == pytest.approx(259 * 6 + 8, abs=4)

    def lines(d):
        return {(r["split"], r["step"]): r for r in read_metrics(os.path.join(d, "metrics.jsonl"))}

    ref, got = lines(salt_reference), lines(workdir)
    assert set(ref) == set(got)
    for key, r in ref.items():
        if key == ("train", 4):  # the kill cut its log interval: the resumed run's line averages step 4 alone
            continue
        for field in ("loss", "ntp_loss", "kd_loss", "kd_weight", "teacher_ntp_loss"):
            if r.get(field) is not None:
                assert got[key][field] == pytest.approx(r[field], rel=2e-5, abs=1e-6), (key, field)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6), salt_run.params(workdir),
                 salt_run.params(salt_reference))


def test_the_overview_of_a_many_method_experiment(tmp_path):
    """More than OVERVIEW_FROM methods: per-seed steps to the target, the loss difference to the baseline,
    and ablation_overview.png."""
    from salt_jax.experiment import report, writeup

    def method(final, std, reach, per_seed, finals=None):
        return {"final_loss_mean": final, "final_loss_std": std, "reach_step": reach, "reach_step_per_seed": per_seed,
                "seeds": [0, 1, 2], "final_loss_per_seed": finals or [final] * 3}

    results = {"total_steps": 300, "target_loss": 4.80, "methods": {
        "baseline": method(4.80, 0.01, 300, [300, None, 275], [4.81, 4.79, 4.80]),
        **{f"salt-{i}": method(4.80 - 0.01 * i, 0.02, 300 - 25 * i, [300 - 25 * i] * 3) for i in range(1, 4)},
        "salt-worse": method(4.85, 0.03, None, [None, None, 300])}}
    lines = writeup._overview_markdown(results)
    assert "| baseline | 300 | 300, -, 275 | 4.8000 ± 0.0100 | +0.0000 | +0.0000 ± 0.0000 |" in lines
    # paired with the baseline's seeds: 4.78 - (4.81, 4.79, 4.80) = (-0.03, -0.01, -0.02)
    assert "| salt-2 | 250 | 250, 250, 250 | 4.7800 ± 0.0200 | -0.0200 | -0.0200 ± 0.0082 |" in lines
    assert "| salt-worse | - | -, -, 300 | 4.8500 ± 0.0300 | +0.0500 | +0.0500 ± 0.0082 |" in lines
    assert writeup._overview_markdown({**results, "methods": dict(list(results["methods"].items())[:4])}) == []
    import matplotlib.pyplot as plt

    from salt_jax.experiment import plots

    path = plots._plot_overview(plt, results, str(tmp_path))
    assert path.endswith("ablation_overview.png") and os.path.getsize(path) > 10_000
