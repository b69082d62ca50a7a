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


def token_ce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position next-token cross-entropy [b, t] (float32)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


KD_LOSSES = ("forward_kl", "reverse_kl", "topk_kl")  # config.salt.kd_loss: the terms `full_kd_per_token` computes


# Argument order of every KD function in salt_jax.kd (here, chunked_loss, sparse): the student's logits first,
# then what they are matched against (the teacher's logits, or its sparse targets), as optax's losses take
# (predictions, targets) and `token_ce` takes (logits, targets).
def full_kd_per_token(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float,
                      kind: str = "forward_kl", topk: int = 0) -> jax.Array:
    """Per-position KD loss [b, t] against the teacher's full logits, scaled by tau^2 (so gradients keep
    their size as tau changes). (Against sparse targets: salt_jax.kd.sparse.sparse_kd_per_token.)

    forward_kl: tau^2 KL(softmax(z_T/tau) || softmax(z_S/tau))   (the paper's term)
    reverse_kl: tau^2 KL(softmax(z_S/tau) || softmax(z_T/tau))
    topk_kl:    tau^2 KL(p_T^k || p_S) on the teacher's top-k tokens, with the teacher
                renormalised over its top-k and the student's full-vocabulary log-probs.
    """
    tau = temperature
    t = teacher_logits.astype(jnp.float32) / tau
    s = student_logits.astype(jnp.float32) / tau
    log_ps = jax.nn.log_softmax(s, axis=-1)
    if kind == "forward_kl":
        log_pt = jax.nn.log_softmax(t, axis=-1)
        kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
    elif kind == "reverse_kl":
        log_pt = jax.nn.log_softmax(t, axis=-1)
        kl = jnp.sum(jnp.exp(log_ps) * (log_ps - log_pt), axis=-1)
    elif kind == "topk_kl":
        top_t, idx = jax.lax.top_k(t, topk)
        log_pt_k = jax.nn.log_softmax(top_t, axis=-1)
        kl = jnp.sum(jnp.exp(log_pt_k) * (log_pt_k - jnp.take_along_axis(log_ps, idx, axis=-1)), axis=-1)
    else:
        raise ValueError(f"unknown KD loss {kind!r}")
    return tau * tau * kl


def target_rank(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """[b, t]: how many vocabulary entries have a strictly larger logit than the target's.

    The one top-k rule of salt_jax: the target is "in the top-k" when its rank
    is below k, so entries tied with the target count in its favour and the
    answer never depends on vocabulary order (lax.top_k would break ties by
    index). Token-selective KD and SALT_DS's learnable tokens both use it.
    """
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)
    return jnp.sum(logits > target_logit, axis=-1)


TOKEN_SELECTIONS = ("none", "topk", "confidence")  # config.salt.token_select: `teacher_selection`'s modes


def teacher_selection(teacher_logits: jax.Array, targets: jax.Array, mode: str, k: int = 10,
                      threshold: float = 0.5) -> jax.Array:
    """Positions [b, t] where the teacher is "good": target in its top-k (`target_rank` < k), or top
    probability > threshold."""
    if mode == "none":
        return jnp.ones(targets.shape, bool)
    if mode == "topk":
        return target_rank(teacher_logits, targets) < k
    if mode == "confidence":
        return jnp.max(jax.nn.softmax(teacher_logits.astype(jnp.float32), axis=-1), axis=-1) > threshold
    raise ValueError(f"unknown token selection {mode!r}")


def mixture_stats(ntp: jax.Array, kd: jax.Array, kd_weight: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Sums for the SALT objective: every real token's loss is (1 - w_t) NTP + w_t KD.

    kd_weight [b, t] is w_t: w(step) where the KD term applies (its sequence is in
    the KD share and the token is selected), 0 elsewhere, so unselected tokens fall
    back to plain NTP and each token keeps total weight 1. Divide `loss_sum` by
    `tokens` for the step loss.
    """
    mask = mask.astype(jnp.float32)
    w = kd_weight * mask
    return {
        "loss_sum": jnp.sum(mask * ntp + w * (kd - ntp)),
        "ntp_sum": jnp.sum(mask * ntp),
        "kd_sum": jnp.sum(mask * kd),
        "kd_weight_sum": jnp.sum(w),
        "kd_tokens": jnp.sum(mask * (kd_weight > 0)),
    }
