"""KD from sparse teacher targets: a few ids and log-probs per position instead of the full logits.

Offline ("cached") KD stores, per training position, k teacher ids with their
log-probs under the tempered teacher p = softmax(z_T / tau) (`from_logits`).
The student's loss then needs no teacher forward. Three readings of the k
slots (config.salt.cache_targets), each a target distribution r over the slots:

    topk        r = p renormalised over its top k                (biased: the tail's mass is dropped)
    topk_other  r = p on the top k, plus one "other" bucket holding the rest of p's mass, matched
                against the student's mass outside the top k    (= full forward KL when k = V)
    sampled     k ids drawn from p with replacement, r = 1/k each (Sparse Logit Sampling, ACL 2025:
                the proposal is p itself, so every importance weight is 1/k; the gradient is unbiased)

Per position, with q = softmax(z_S / tau), c_j the slots' target log-probs
(log r_j for topk; log p_j for topk_other and sampled, so that the value is
KL(p || q) when k = V, or its unbiased estimate when sampled), r_o / c_o the
other bucket and q_o = 1 - sum of q over the top-k ids:

    KD = tau^2 [ sum_j r_j (c_j - log q_{id_j}) + r_o (c_o - log q_o) ]
    d KD / d z_S = tau (q - r_V),  r_V = r scattered onto the vocabulary (repeated ids add up), plus
                   r_o q_i / q_o on every id outside the top k (q times sum(r) + r_o, not q, when
                   float16 storage leaves that sum a little off 1)

`sparse_kd_per_token` is the reference (autodiff through full student log-probs) and
`sparse_kd_value_and_grad` the earlier closed form (a second log-softmax, [.., V] masks
and scatters; kept as a reference). `ce_kd_value_and_grad` is what the losses
run (salt_jax.kd.chunked_loss per chunk, salt_jax.kd.objective.DenseLoss at once):
the next-token CE and the sparse KD from one pass over the student's logits,
sharing its max and exp (and, at tau = 1, its softmax and log-sum-exp), with
the KD gradient written into the CE's: per row a scalar times q, plus k values
at the slots' ids. With Z = sum of exp(z / tau - max), log q_o = log(Z - Z_top)
- log Z, good to about 1e-8 Z; in a chunk where some row has r_o / q_o >
EXACT_ABOVE that error would show, and q_o is summed over the ids outside the
top k instead (one more pass over that chunk's rows).
All are pure functions of arrays.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

EXACT_ABOVE = 16.0  # r_o / q_o above which q_o is summed exactly (see ce_kd_value_and_grad)
KINDS = ("topk", "topk_other", "sampled")
_FAR = -1e30  # stands in for log 0 where a log-sum-exp would otherwise see only -inf (its gradient is NaN)


class Targets(NamedTuple):
    """One batch's sparse teacher targets (leading dims [b, t]; each a jax or NumPy array)."""

    ids: jax.Array  # [b, t, k] int: the top-k (or sampled) vocabulary ids
    logp: jax.Array  # [b, t, k] float: log p_tau(id) under the tempered teacher
    other: jax.Array  # [b, t] float: log of p_tau's mass outside the top-k ids (-inf: none; 0 when sampled)
    target_logp: jax.Array  # [b, t] float: the untempered teacher's log-prob of the target (its NTP loss)


def from_logits(teacher_logits: jax.Array, targets: jax.Array, k: int, kind: str, tau: float,
                key: jax.Array | None = None) -> Targets:
    """The sparse targets of one batch from the teacher's logits [b, t, V] (what the cache stores)."""
    z = teacher_logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(z / tau, axis=-1)
    target_logp = jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), targets[..., None], axis=-1)[..., 0]
    if kind == "sampled":
        if key is None:
            raise ValueError("sampled targets need a PRNG key")
        cdf = jnp.cumsum(jnp.exp(logp), axis=-1)  # inverse-CDF sampling: no [.., k, V] noise tensor
        u = jax.random.uniform(key, (*z.shape[:-1], k), jnp.float32) * cdf[..., -1:]
        flat = jax.vmap(jnp.searchsorted)(cdf.reshape(-1, z.shape[-1]), u.reshape(-1, k))
        ids = jnp.minimum(flat.reshape(u.shape), z.shape[-1] - 1).astype(jnp.int32)
        return Targets(ids, jnp.take_along_axis(logp, ids, axis=-1), jnp.zeros(z.shape[:-1], jnp.float32),
                       target_logp)
    top, ids = jax.lax.top_k(logp, k)
    rest = _masked_lse(logp, ids)  # log of the mass outside the top k, from the logits (no 1 - sum rounding)
    return Targets(ids.astype(jnp.int32), top, jnp.where(rest <= _FAR / 2, -jnp.inf, rest), target_logp)


def _in_top(ids: jax.Array, vocab: int) -> jax.Array:
    """[.., V] bool: which vocabulary entries are among `ids` [.., k]."""
    flat = ids.reshape(-1, ids.shape[-1])
    hit = jax.vmap(lambda i: jnp.zeros(vocab, bool).at[i].set(True))(flat)
    return hit.reshape(*ids.shape[:-1], vocab)


def _masked_lse(log_probs: jax.Array, ids: jax.Array, in_top: jax.Array | None = None) -> jax.Array:
    """log sum exp of `log_probs` [.., V] over the entries not in `ids` (about _FAR when none is left);
    `in_top`: `_in_top(ids, V)` when the caller has it already."""
    in_top = _in_top(ids, log_probs.shape[-1]) if in_top is None else in_top
    return jax.nn.logsumexp(jnp.where(in_top, _FAR, log_probs), axis=-1)


def slot_weights(t: Targets, kind: str):
    """(r [.., k], c [.., k], r_o [..], c_o [..]): the target distribution over the slots and the bucket."""
    logp = t.logp.astype(jnp.float32)
    if kind == "topk":
        c = jax.nn.log_softmax(logp, axis=-1)
        r_o = jnp.zeros(logp.shape[:-1], jnp.float32)
        return jnp.exp(c), c, r_o, r_o
    if kind == "sampled":
        r_o = jnp.zeros(logp.shape[:-1], jnp.float32)
        return jnp.full(logp.shape, 1.0 / logp.shape[-1], jnp.float32), logp, r_o, r_o
    if kind == "topk_other":
        other = t.other.astype(jnp.float32)
        r_o = jnp.where(jnp.isfinite(other), jnp.exp(other), 0.0)
        return jnp.exp(logp), logp, r_o, jnp.where(r_o > 0, other, 0.0)
    raise ValueError(f"unknown sparse targets {kind!r}")


def _value(log_q: jax.Array, t: Targets, kind: str, log_qo: jax.Array | None = None) -> jax.Array:
    """sum_j r_j (c_j - log q_j) + r_o (c_o - log q_o) per position, from the student's log q [.., V]
    (`log_qo`: log q_o when the caller has it already)."""
    r, c, r_o, c_o = slot_weights(t, kind)
    value = jnp.sum(r * (c - jnp.take_along_axis(log_q, t.ids, axis=-1)), axis=-1)
    if kind != "topk_other":
        return value
    log_qo = _masked_lse(log_q, t.ids) if log_qo is None else log_qo
    return value + jnp.where(r_o > 0, r_o * (c_o - log_qo), 0.0)


def sparse_kd_per_token(student_logits: jax.Array, t: Targets, tau, kind: str) -> jax.Array:
    """The reference: per-position KD [b, t] against sparse targets, scaled by tau^2 (autodiff gradients).
    (Against the teacher's full logits: salt_jax.kd.losses.full_kd_per_token; student first in both.)"""
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / tau, axis=-1)
    return tau * tau * _value(log_q, t, kind)


def sparse_kd_value_and_grad(s_logits: jax.Array, t: Targets, tau, kind: str):
    """Per-position KD [..] and its gradient w.r.t. the student logits [.., V], in closed form."""
    vocab = s_logits.shape[-1]
    log_q = jax.nn.log_softmax(s_logits / tau, axis=-1)
    q = jnp.exp(log_q)
    r, _, r_o, _ = slot_weights(t, kind)
    flat_ids, flat_r = t.ids.reshape(-1, t.ids.shape[-1]), r.reshape(-1, r.shape[-1])
    r_v = jax.vmap(lambda i, w: jnp.zeros(vocab, jnp.float32).at[i].add(w))(flat_ids, flat_r)
    r_v = r_v.reshape(q.shape)
    log_qo = None
    if kind == "topk_other":  # the bucket's mass spread over the ids outside the top k, in proportion to q
        in_top = _in_top(t.ids, vocab)
        log_qo = _masked_lse(log_q, t.ids, in_top)
        spread = r_o[..., None] * jnp.exp(jnp.minimum(log_q - log_qo[..., None], 0.0))
        r_v = r_v + jnp.where(~in_top & (r_o[..., None] > 0), spread, 0.0)
    total = jnp.sum(r, axis=-1) + r_o  # 1 up to the stored log-probs' rounding; the exact derivative keeps it
    return tau * tau * _value(log_q, t, kind, log_qo), tau * (q * total[..., None] - r_v)


def ce_kd_value_and_grad(s: jax.Array, y: jax.Array, t: Targets, tau, kind: str, ce_weight: jax.Array,
                         kd_weight: jax.Array, unit_tau: bool = False):
    """(CE [..], KD [..], ce_weight dCE/ds + kd_weight dKD/ds [.., V]) from the student's logits s [.., V]
    (float32), the targets y [..] and the sparse targets t, in one pass over s.

    `unit_tau`: tau is known to be 1 (static), so the KD's softmax and log-sum-exp are the CE's. Otherwise
    one more exp of s / tau, sharing the row max. topk_other needs distinct ids (top-k ids are).
    """
    mx = jnp.max(s, axis=-1, keepdims=True)
    shifted = s - mx
    e = jnp.exp(shifted)
    z = jnp.sum(e, axis=-1, keepdims=True)
    log_z = jnp.log(z)
    ce = -(jnp.take_along_axis(shifted, y[..., None], axis=-1) - log_z)[..., 0]
    p = e / z
    ids = t.ids.astype(jnp.int32)
    s_ids = jnp.take_along_axis(s, ids, axis=-1)
    if unit_tau:
        q, zt, log_zt, sh_ids = p, z, log_z, s_ids - mx
    else:
        et = jnp.exp(s / tau - mx / tau)  # max(s / tau) = max(s) / tau: division is monotone
        zt = jnp.sum(et, axis=-1, keepdims=True)
        log_zt = jnp.log(zt)
        q, sh_ids = et / zt, s_ids / tau - mx / tau
    log_q_ids = sh_ids - log_zt
    r, c, r_o, c_o = slot_weights(t, kind)
    kd = jnp.sum(r * (c - log_q_ids), axis=-1)
    total = jnp.sum(r, axis=-1) + r_o  # 1 up to the stored log-probs' rounding; the exact derivative keeps it
    ce_w, kd_w = ce_weight[..., None], tau * kd_weight[..., None]
    onehot = ce_w * jax.nn.one_hot(y, s.shape[-1], dtype=jnp.float32)
    if kind != "topk_other":
        grad = (ce_w * p - onehot + kd_w * total[..., None] * q if not unit_tau
                else p * (ce_w + kd_w * total[..., None]) - onehot)
        return ce, tau * tau * kd, _scatter(grad, ids, -kd_w * r, add=True)
    # the bucket: d/dz of -r_o log q_o is r_o q_i / q_o on the ids outside the top k, 0 on them
    live = r_o > 0
    rest = zt[..., 0] - jnp.sum(jnp.exp(sh_ids), axis=-1)  # Z - Z_top: the student's mass outside, times Z
    # Z - Z_top is good to about 1e-8 Z: where r_o / q_o is large that error matters, and the chunk sums its
    # mass outside the top k exactly instead (one more pass over the row; rare while the student is young)
    exact = lambda: jnp.sum(_scatter(e if unit_tau else et, ids, jnp.zeros(ids.shape, jnp.float32), add=False), -1)
    rest = jax.lax.cond(jnp.any(live & (r_o * zt[..., 0] > EXACT_ABOVE * rest)), exact, lambda: rest)
    rest = jnp.where(live, jnp.maximum(rest, jnp.finfo(jnp.float32).tiny), 1.0)
    log_qo = jnp.log(rest) - log_zt[..., 0]
    kd = kd + jnp.where(live, r_o * (c_o - log_qo), 0.0)
    a = jnp.where(live, r_o * zt[..., 0] / rest, 0.0)[..., None]  # r_o / q_o
    rows = (ce_w * p - onehot + kd_w * (total[..., None] - a) * q if not unit_tau
            else p * (ce_w + kd_w * (total[..., None] - a)) - onehot)
    q_ids = jnp.exp(log_q_ids)  # on the top-k ids: written, not corrected (no cancellation against a q)
    p_ids = q_ids if unit_tau else jnp.exp(s_ids - mx - log_z)
    top = ce_w * (p_ids - (ids == y[..., None])) + kd_w * (total[..., None] * q_ids - r)
    return ce, tau * tau * kd, _scatter(rows, ids, top, add=False)


def _scatter(x: jax.Array, ids: jax.Array, values: jax.Array, add: bool) -> jax.Array:
    """x [.., V] with `values` [.., k] added (or written) at `ids` [.., k] of each row: one scatter."""
    flat, shape = x.reshape(-1, x.shape[-1]), x.shape
    rows = jnp.arange(flat.shape[0], dtype=jnp.int32)[:, None]
    idx = (rows, ids.reshape(flat.shape[0], -1))
    v = values.reshape(idx[1].shape)
    out = flat.at[idx].add(v, mode="promise_in_bounds") if add else flat.at[idx].set(v, mode="promise_in_bounds",
                                                                                      unique_indices=True)
    return out.reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def ce_and_kd(s: jax.Array, y: jax.Array, t: Targets, tau, kind: str, unit_tau: bool = False):
    """Per-position CE [..] and sparse KD [..] (as `sparse_kd_per_token`) of the logits s [.., V], for autodiff (the
    dense loss): the forward pass is one pass over s, the backward `ce_kd_value_and_grad` with the two
    cotangents as its weights (one more, as the CE's own backward)."""
    ce, kd, _ = _ce_kd_no_grad(s, y, t, tau, kind, unit_tau)
    return ce, kd


def _ce_kd_no_grad(s, y, t, tau, kind, unit_tau):
    zero = jnp.zeros(y.shape, jnp.float32)  # the unused gradient is dead code to XLA
    return ce_kd_value_and_grad(s.astype(jnp.float32), y, t, tau, kind, zero, zero, unit_tau)


def _ce_and_kd_fwd(s, y, t, tau, kind, unit_tau):
    ce, kd, _ = _ce_kd_no_grad(s, y, t, tau, kind, unit_tau)
    return (ce, kd), (s, y, t, tau)


def _ce_and_kd_bwd(kind, unit_tau, res, ct):
    s, y, t, tau = res
    _, _, d_s = ce_kd_value_and_grad(s.astype(jnp.float32), y, t, tau, kind, ct[0], ct[1], unit_tau)
    return d_s.astype(s.dtype), *jax.tree.map(_zero_cotangent, (y, t, tau))


def _zero_cotangent(x):
    x = jnp.asarray(x)
    return jnp.zeros(x.shape, jax.dtypes.float0) if jnp.issubdtype(x.dtype, jnp.integer) else jnp.zeros_like(x)


ce_and_kd.defvjp(_ce_and_kd_fwd, _ce_and_kd_bwd)
