"""Train state and its creation directly in the sharded layout."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct

from salt_jax.kd.schedules import initial_kd_state
from salt_jax.model import sharding


@struct.dataclass
class TrainState:
    """Everything a training step updates (and a checkpoint holds)."""

    step: jax.Array
    params: Any
    opt_state: Any
    kd: Any  # KD-phase bookkeeping: the adaptive switch's state, salt_jax.kd.schedules.initial_kd_state


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, seq_len: int):
    def init(rng):
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        params = model.init(rng, tokens)["params"]  # leaves boxed with logical axis names
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          kd=initial_kd_state())
    return init


def abstract_state(model, tx, seq_len: int, mesh) -> tuple[TrainState, TrainState]:
    """(abstract unboxed state, matching NamedShardings), without allocating anything."""
    boxed = jax.eval_shape(_init_fn(model, tx, seq_len), jax.random.key(0))
    return nn.meta.unbox(boxed), sharding.shardings_for(boxed, mesh)


def create_state(model, tx, seq_len: int, mesh, seed: int) -> TrainState:
    """Initialises parameters and optimizer state under jit straight into their shardings.

    No array is ever materialised whole on one host.
    """
    _, shardings = abstract_state(model, tx, seq_len, mesh)
    init = _init_fn(model, tx, seq_len)
    with sharding.on_mesh(mesh):
        return jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=shardings)(jax.random.key(seed))
