"""The compiled steps: pure functions of (state, batch) -> (state, metrics).

`make_train_step` and `make_eval_step` return plain functions; `compile_steps`
jits them with explicit shardings over the mesh and donates the state.
Metrics are sums and counts (see salt_jax.losses), reduced over the global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from salt_jax import losses, sharding


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, lr_schedule, pad_id: int):
    """One next-token training step: forward, backward, clip, AdamW update."""

    def train_step(state, tokens):
        inputs, targets, mask = losses.split_tokens(tokens, pad_id)

        def loss_fn(params):
            logits = model.apply({"params": params}, inputs)
            stats = losses.next_token_stats(logits, targets, mask)
            return stats["loss_sum"] / jnp.maximum(stats["tokens"], 1.0), stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(stats, loss=loss, grad_norm=optax.tree.norm(grads),
                       learning_rate=lr_schedule(state.step))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model: nn.Module, pad_id: int):
    """Held-out next-token loss and accuracy on one batch, as sums and counts."""

    def eval_step(params, tokens):
        inputs, targets, mask = losses.split_tokens(tokens, pad_id)
        return losses.next_token_stats(model.apply({"params": params}, inputs), targets, mask)

    return eval_step


class CompiledSteps:
    """The jitted train and eval steps for one mesh, with their shardings.

    Calls run under the mesh and the logical-axis rules, so activation
    constraints in the model resolve to mesh axes.
    """

    def __init__(self, model, tx, lr_schedule, pad_id: int, mesh, state_shardings):
        self.mesh = mesh
        self.batch_sharding = sharding.batch_sharding(mesh)
        rep = sharding.replicated(mesh)
        self._train = jax.jit(make_train_step(model, tx, lr_schedule, pad_id),
                              in_shardings=(state_shardings, self.batch_sharding),
                              out_shardings=(state_shardings, rep), donate_argnums=0)
        self._eval = jax.jit(make_eval_step(model, pad_id),
                             in_shardings=(state_shardings.params, self.batch_sharding), out_shardings=rep)

    def train(self, state, tokens):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            return self._train(state, tokens)

    def eval(self, params, tokens):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            return self._eval(params, tokens)
