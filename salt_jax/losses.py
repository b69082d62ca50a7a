"""Loss numerics as pure functions of logits and targets.

Everything is returned as sums and counts over non-padding targets, so means
over devices, hosts and log intervals are exact (sum the sums, then divide).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def next_token_stats(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Summed next-token cross-entropy and correct predictions over masked positions.

    logits [b, t, V] (float32), targets [b, t] int, mask [b, t] bool/0-1.
    Returns {"loss_sum", "correct", "tokens"} (float32 scalars).
    """
    mask = mask.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(ce * mask),
        "correct": jnp.sum(correct * mask),
        "tokens": jnp.sum(mask),
    }


def split_tokens(tokens: jax.Array, pad_id: int):
    """[b, L+1] token rows -> (inputs [b, L], targets [b, L], mask [b, L]) with pads masked."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    return inputs, targets, targets != pad_id
