"""The model against a NumPy float64 reference, parameter counts, causality, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from salt_jax.model import presets
from salt_jax.model.flops import param_count
from salt_jax.model.transformer import Transformer

from reference import transformer_logits


def _init(cfg, seq=16, seed=0):
    model = Transformer(cfg)
    from flax import linen as nn

    params = nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, seq), jnp.int32))["params"])
    return model, params


@pytest.mark.parametrize("name", presets.PRESETS)
def test_param_count_matches_closed_form(name):
    cfg = presets.model_config(name)
    shapes = jax.eval_shape(lambda r: Transformer(cfg).init(r, jnp.zeros((1, 8), jnp.int32)), jax.random.key(0))
    from flax import linen as nn

    counted = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes)))
    assert counted == param_count(cfg)


def test_paper_sizes_land_near_the_papers_counts():
    for name, target in (("paper-1.5b", 1.5e9), ("paper-2.8b", 2.8e9), ("paper-8.6b", 8.6e9)):
        assert abs(param_count(presets.model_config(name)) / target - 1) < 0.05, name


@pytest.mark.parametrize("tie", [False, True])
def test_forward_matches_numpy_float64_reference(tie):
    cfg = presets.model_config("test-tiny")
    cfg.tie_embeddings = tie
    model, params = _init(cfg)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16))
    got = np.asarray(model.apply({"params": params}, jnp.asarray(tokens)))
    want = transformer_logits(jax.device_get(params), cfg, tokens)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_logits_are_causal():
    cfg = presets.model_config("test-tiny")
    model, params = _init(cfg)
    tokens = np.random.default_rng(1).integers(3, cfg.vocab_size, (1, 16))
    changed = tokens.copy()
    changed[0, 9] = (changed[0, 9] + 7) % cfg.vocab_size
    a = np.asarray(model.apply({"params": params}, jnp.asarray(tokens)))
    b = np.asarray(model.apply({"params": params}, jnp.asarray(changed)))
    np.testing.assert_array_equal(a[:, :9], b[:, :9])  # positions before the change: bit-identical
    assert np.abs(a[:, 9:] - b[:, 9:]).max(axis=-1).min() > 1e-4  # every later position sees it


def test_bfloat16_compute_stays_close_to_float32():
    cfg = presets.model_config("test-tiny")
    model, params = _init(cfg)
    cfg16 = presets.model_config("test-tiny")
    cfg16.dtype = "bfloat16"
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 16)))
    p32 = jax.nn.softmax(model.apply({"params": params}, tokens))
    logits16 = Transformer(cfg16).apply({"params": params}, tokens)
    assert logits16.dtype == jnp.float32  # logits are accumulated in float32
    p16 = jax.nn.softmax(logits16)
    # bf16 has an 8-bit mantissa (relative error ~4e-3 per op): probabilities agree to 1e-2.
    assert float(jnp.abs(p16 - p32).max()) < 1e-2
    assert float(jnp.abs(p16 - p32).max()) > 0  # bf16 really was used


def test_remat_policies_give_identical_gradients():
    cfg = presets.model_config("test-tiny")
    model, params = _init(cfg)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 16)))

    def grads(c):
        f = lambda p: jnp.mean(Transformer(c).apply({"params": p}, tokens) ** 2)  # noqa: E731
        return jax.grad(f)(params)

    base = grads(cfg)
    for policy in ("full", "save_dots"):
        c = presets.model_config("test-tiny")
        c.remat = policy
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), base, grads(c))
