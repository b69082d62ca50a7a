"""Attention kernels against a NumPy float64 reference: GQA, sliding window, soft-cap, kernel fallback."""

import jax.numpy as jnp
import numpy as np
import pytest

from salt_jax.model import attention


def _reference(q, k, v, scale, softcap=0.0, window=0):
    """Causal GQA attention in float64: position i sees j in (i - window, i] (all j <= i when window = 0)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    group = n // k.shape[2]
    out = np.zeros((b, t, n, h))
    for head in range(n):
        s = np.einsum("bth,bsh->bts", q[:, :, head], k[:, :, head // group]) * scale
        if softcap:
            s = softcap * np.tanh(s / softcap)
        i, j = np.arange(t)[:, None], np.arange(t)[None, :]
        allowed = (j <= i) & ((j > i - window) if window else True)
        s = np.where(allowed, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, :, head] = np.einsum("bts,bsh->bth", p, v[:, :, head // group])
    return out


def _qkv(seed=0, t=12):
    r = np.random.default_rng(seed)
    return (jnp.asarray(r.normal(size=s), jnp.float32) for s in ((2, t, 4, 8), (2, t, 2, 8), (2, t, 2, 8)))


@pytest.mark.parametrize("softcap,window", [(0.0, 0), (0.0, 4), (1.5, 0), (1.5, 5)])
def test_xla_attention_matches_float64_reference(softcap, window):
    q, k, v = _qkv()
    got = attention.attend(q, k, v, implementation="xla", softcap=softcap, window=window)
    np.testing.assert_allclose(got, _reference(q, k, v, 8 ** -0.5, softcap, window), atol=2e-6)


def test_window_and_softcap_change_the_result():
    q, k, v = _qkv(1)
    full = np.asarray(attention.attend(q, k, v, implementation="xla"))
    assert np.abs(full - np.asarray(attention.attend(q, k, v, implementation="xla", window=3))).max() > 1e-2
    assert np.abs(full - np.asarray(attention.attend(q, k, v, implementation="xla", softcap=0.5))).max() > 1e-2


def test_a_refused_kernel_falls_back_to_xla_with_the_same_numbers():
    """On CPU cuDNN and splash are unavailable: `attend` falls back to XLA instead of failing."""
    q, k, v = _qkv(2)
    ref = _reference(q, k, v, 0.3, window=4)
    for impl in ("cudnn", "splash", "auto"):
        np.testing.assert_allclose(attention.attend(q, k, v, implementation=impl, scale=0.3, window=4), ref, atol=2e-6)
    assert attention.default_implementation("gpu") == "cudnn" and attention.default_implementation("tpu") == "splash"
    assert attention.default_implementation("cpu") == "xla"
