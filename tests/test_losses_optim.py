"""Loss sums against NumPy float64; learning-rate schedules against hand-computed values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from salt_jax.config import base_config
from salt_jax.errors import UserError
from salt_jax.kd import losses
from salt_jax.train import optim

from reference import next_token_ce


def test_next_token_stats_match_float64_and_skip_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    tokens = rng.integers(1, 11, (3, 6))
    tokens[1, 4:] = 0  # padding at the end of row 1
    inputs, targets, mask = losses.split_tokens(jnp.asarray(tokens), pad_id=0)
    assert inputs.shape == (3, 5) and mask.sum() == 13
    stats = losses.next_token_stats(jnp.asarray(logits), targets, mask)
    ce = next_token_ce(logits, tokens[:, 1:])
    m = tokens[:, 1:] != 0
    np.testing.assert_allclose(float(stats["loss_sum"]), ce[m].sum(), rtol=1e-6)
    assert float(stats["tokens"]) == 13
    assert float(stats["correct"]) == float(((logits.argmax(-1) == tokens[:, 1:]) & m).sum())


def test_uniform_logits_give_log_vocab():
    stats = losses.next_token_stats(jnp.zeros((2, 4, 50)), jnp.ones((2, 4), jnp.int32), jnp.ones((2, 4)))
    assert float(stats["loss_sum"]) / 8 == pytest.approx(math.log(50), rel=1e-6)


def test_warmup_cosine_schedule_values():
    c = base_config().optim
    c.learning_rate, c.warmup_steps, c.final_lr_fraction = 1e-3, 10, 0.1
    s = optim.lr_schedule(c, total_steps=110)
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(5e-4)
    assert float(s(10)) == pytest.approx(1e-3)
    # halfway through the 100 decay steps: end + (peak - end) * (1 + cos(pi/2)) / 2
    assert float(s(60)) == pytest.approx(1e-4 + 0.9e-3 * 0.5, rel=1e-5)
    assert float(s(110)) == pytest.approx(1e-4, rel=1e-5)


def test_linear_and_constant_schedules():
    c = base_config().optim
    c.learning_rate, c.warmup_steps, c.final_lr_fraction = 2e-3, 4, 0.0
    c.schedule = "linear"
    s = optim.lr_schedule(c, total_steps=24)
    assert float(s(2)) == pytest.approx(1e-3)
    assert float(s(14)) == pytest.approx(1e-3)
    c.schedule = "constant"
    assert float(optim.lr_schedule(c, 24)(20)) == pytest.approx(2e-3)
    c.schedule = "exponential"
    with pytest.raises(UserError, match="config.optim.schedule"):
        optim.lr_schedule(c, 24)
