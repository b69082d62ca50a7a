"""ALM (salt_jax.kd.alm) against a NumPy float64 reference, and its dense and chunked paths against each other."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from salt_jax.data.alignment import AlignedBatch
from salt_jax.kd import alm, objective
from salt_jax.kd.chunked_loss import LossOptions
from salt_jax.model import presets
from salt_jax.model.transformer import Transformer

B, T, U, V_S, V_T = 3, 12, 16, 40, 29


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _reference(s_logits, t_logits, targets, t_targets, s_chunks, t_chunks, mask, w, tau, b, kind):
    """The loss (1 - w) NTP + w ALM of one batch, written out chunk by chunk in float64."""
    s1 = np.take_along_axis(_log_softmax(s_logits), targets[..., None], -1)[..., 0]
    st = np.take_along_axis(_log_softmax(s_logits / tau), targets[..., None], -1)[..., 0]
    tt = np.take_along_axis(_log_softmax(t_logits / tau), t_targets[..., None], -1)[..., 0]
    divs, weights = [], []
    for r in range(B):
        for c in range(T):
            sel = (s_chunks[r] == c) & (mask[r] > 0)
            if not sel.any():
                continue
            l_s = min(st[r][sel].sum(), -1e-6) / b
            l_t = min(tt[r][t_chunks[r] == c].sum(), -1e-6) / b
            (lp, lq) = (l_t, l_s) if kind == "forward_kl" else (l_s, l_t)
            p, q = np.exp(lp), np.exp(lq)
            divs.append(b * (p * (lp - lq) + (1 - p) * (np.log1p(-p) - np.log1p(-q))))
            weights.append(w[r])
    tokens = mask.sum()
    ntp = (-(s1 * mask) * (1 - w[:, None])).sum() / tokens
    return ntp + np.dot(weights, divs) / len(divs), np.mean(divs)


def _batch(seed):
    rng = np.random.default_rng(seed)
    s_logits = rng.normal(size=(B, T, V_S)) * 2
    t_logits = rng.normal(size=(B, U, V_T)) * 2
    targets, t_targets = rng.integers(1, V_S, (B, T)), rng.integers(1, V_T, (B, U))
    # chunks: consecutive runs of 1-3 positions on both sides, some positions outside every chunk
    s_chunks, t_chunks = np.full((B, T), -1), np.full((B, U), -1)
    for r in range(B):
        i, j, c = 1, 2, 0
        while True:
            a, b_ = rng.integers(1, 4), rng.integers(1, 4)
            if i + a > T or j + b_ > U:
                break
            s_chunks[r, i:i + a], t_chunks[r, j:j + b_] = c, c
            i, j, c = i + a, j + b_, c + 1
    mask = np.ones((B, T))
    mask[0, -2:] = 0  # padding
    return s_logits, t_logits, targets, t_targets, s_chunks, t_chunks, mask


@pytest.mark.parametrize("kind,tau,b", [("forward_kl", 1.0, 100.0), ("forward_kl", 2.0, 1.0),
                                        ("reverse_kl", 1.5, 10.0)])
def test_mixture_stats_equal_a_float64_reference(kind, tau, b):
    s_logits, t_logits, targets, t_targets, s_chunks, t_chunks, mask = _batch(0)
    w = np.array([0.5, 0.5, 0.0])  # the third row outside the KD share
    want_loss, want_kd = _reference(s_logits, t_logits, targets, t_targets, s_chunks, t_chunks, mask, w, tau, b,
                                    kind)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    student = alm.target_logprobs(f32(s_logits), jnp.asarray(targets), tau)
    teacher = alm.teacher_chunks(*alm.target_logprobs(f32(t_logits), jnp.asarray(t_targets), tau),
                                 jnp.asarray(t_chunks), T)
    stats = alm.mixture_stats(student, teacher, jnp.asarray(s_chunks), f32(mask), f32(np.repeat(w[:, None], T, 1)),
                              kind, b)
    assert float(stats["loss_sum"] / stats["tokens"]) == pytest.approx(want_loss, rel=1e-5)
    assert float(stats["kd_sum"] / stats["tokens"]) == pytest.approx(want_kd, rel=1e-5)
    assert float(stats["aligned_tokens"]) == ((s_chunks >= 0) & (mask > 0)).sum()


def test_binary_kl_is_zero_at_agreement_and_positive_otherwise():
    x = jnp.array([-0.01, -1.0, -30.0, -300.0])
    np.testing.assert_allclose(alm.binary_kl(x, x), 0.0, atol=1e-7)
    near = x[:3]  # (at -300 both probabilities are 0 in float32: why chunk log-likelihoods are binarised at b=100)
    assert bool(jnp.all(alm.binary_kl(near, near - 0.5) > 0)) and bool(jnp.all(alm.binary_kl(near - 0.5, near) > 0))
    assert bool(jnp.all(jnp.isfinite(jax.grad(lambda q: alm.binary_kl(x, q).sum())(x - 1.0))))


def _models():
    s_cfg, t_cfg = presets.model_config("test-tiny"), presets.model_config("test-tiny-teacher")
    s_cfg.vocab_size, t_cfg.vocab_size = V_S, V_T
    student, teacher = Transformer(s_cfg), Transformer(t_cfg)
    s_params = student.init(jax.random.key(0), jnp.zeros((1, T), jnp.int32))["params"]
    t_params = teacher.init(jax.random.key(1), jnp.zeros((1, U), jnp.int32))["params"]
    return student, teacher, s_params, t_params


def test_dense_and_chunked_paths_give_the_same_loss_and_gradient():
    """ChunkedLoss.aligned (target log-probs one chunk of logits at a time, remat) equals DenseLoss.aligned (full
    logits) in value and in every parameter's gradient, with the teacher online and from its chunk values."""
    student, teacher, s_params, t_params = _models()
    _, _, targets, t_targets, s_chunks, t_chunks, mask = _batch(1)
    rng = np.random.default_rng(2)
    tokens = np.concatenate([rng.integers(1, V_S, (B, 1)), targets], 1)
    tokens[0, -2:] = 0
    t_tokens = np.concatenate([rng.integers(1, V_T, (B, 1)), t_targets], 1)
    batch = AlignedBatch(*(jnp.asarray(a, jnp.int32) for a in (tokens, t_tokens, s_chunks, t_chunks,
                                                                np.zeros((B, 2)))))
    salt = ml_collections.ConfigDict({"kd_loss": "forward_kl", "alm_temperature": 20.0, "temperature": 1.0})
    dense = objective.DenseLoss(salt, pad_id=0)
    chunked = objective.ChunkedLoss(dataclasses.replace(LossOptions(chunk=5), kd_loss="forward_kl",
                                                        alm_temperature=20.0), pad_id=0)
    w = jnp.full((B, T), 0.5)

    def value(loss, teacher_arg):
        def f(p):
            stats = loss.aligned(student, p, batch, teacher_arg, w, 1.5)
            return stats["loss_sum"] / stats["tokens"], stats
        return jax.value_and_grad(f, has_aux=True)(s_params)

    (v_d, st_d), g_d = value(dense, (teacher, t_params))
    (v_c, st_c), g_c = value(chunked, (teacher, t_params))
    assert float(v_c) == pytest.approx(float(v_d), rel=1e-5)
    for k in ("kd_sum", "ntp_sum", "teacher_ntp_sum", "correct", "aligned_tokens"):
        assert float(st_c[k]) == pytest.approx(float(st_d[k]), rel=1e-5, abs=1e-6), k
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_d, g_c)

    # the teacher's chunk values (what a cached teacher stores) give the same step
    t_logits = teacher.apply({"params": t_params}, batch.teacher_tokens[:, :-1])
    cached = alm.teacher_chunks(*alm.target_logprobs(t_logits, batch.teacher_tokens[:, 1:], 1.5),
                                batch.teacher_chunks, T)
    (v_k, _), g_k = value(chunked, cached)
    assert float(v_k) == pytest.approx(float(v_d), rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_d, g_k)
    assert float(st_d["kd_sum"]) > 0


@pytest.mark.parametrize("tau", [1.0, 1.7])
def test_the_fused_chunked_pass_completes_chunks_across_its_windows(tau):
    """aligned_chunked_loss with windows of 4 positions and 3 on each side (chunks of up to 3 positions cross the
    windows' edges) equals alm.mixture_stats on full logits, in every sum and in the gradients of the hidden
    states and the output projection."""
    from salt_jax.kd.chunked_loss import aligned_chunked_loss

    _, t_logits, targets, t_targets, s_chunks, t_chunks, mask = _batch(3)
    rng = np.random.default_rng(4)
    d = 8
    h = jnp.asarray(rng.normal(size=(B, T, d)), jnp.float32)
    w_out = jnp.asarray(rng.normal(size=(d, V_S)), jnp.float32)
    teacher = alm.teacher_chunks(*alm.target_logprobs(jnp.asarray(t_logits, jnp.float32), jnp.asarray(t_targets),
                                                      tau), jnp.asarray(t_chunks), T)
    y, ch, m = jnp.asarray(targets), jnp.asarray(s_chunks), jnp.asarray(mask, jnp.float32)
    kw = jnp.asarray(np.repeat([[0.5], [0.3], [0.0]], T, 1), jnp.float32)
    opts = dataclasses.replace(LossOptions(chunk=4), kd_loss="reverse_kl", alm_temperature=7.0)

    def dense(h, w_out):
        stats = alm.mixture_stats(alm.target_logprobs(h @ w_out, y, tau), teacher, ch, m, kw, "reverse_kl", 7.0)
        return stats["loss_sum"], stats

    def fused(h, w_out):
        stats = aligned_chunked_loss(h, w_out, y, m, ch, teacher, kw, tau, opts, look=3)
        return stats["loss_sum"], stats

    (_, want), g_want = jax.value_and_grad(dense, argnums=(0, 1), has_aux=True)(h, w_out)
    (_, got), g_got = jax.value_and_grad(fused, argnums=(0, 1), has_aux=True)(h, w_out)
    for k in ("loss_sum", "ntp_sum", "kd_sum", "teacher_ntp_sum", "kd_weight_sum", "kd_tokens", "aligned_tokens",
              "tokens"):
        assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-5, abs=1e-6), k
    assert float(got["kd_sum"]) > 0
    for a, b in zip(g_want, g_got):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
