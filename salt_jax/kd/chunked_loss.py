"""The SALT loss from hidden states, one chunk of logits at a time (memory-light).

At realistic vocabularies the student's and the teacher's [batch, seq, vocab]
float32 logits dominate a KD step's memory. `chunked_loss` takes the final
hidden states and output projections of both models instead, walks the
sequence in chunks of `chunk` positions with `lax.scan`, and never holds more
than one chunk of either model's logits. It returns the same sums as the dense
path (`salt_jax.kd.losses.mixture_stats` plus accuracy and the teacher's NTP loss).

The gradient is defined with `jax.custom_vjp` and computed in the forward pass
(per chunk: d loss / d logits in closed form, then d hidden = d logits W^T and
d W += hidden^T d logits), so the backward pass only scales the saved
gradients by the incoming cotangent. Nothing is recomputed: per token this
costs the student's logits, two gradient matmuls and the teacher's logits,
against five matmuls for a recompute-in-backward design. Only `loss_sum`
carries a gradient; the other outputs are statistics.

Closed-form gradients of one token's loss (1 - w) CE + w KD with respect to
the student's logits s (q = softmax(s / tau), p = softmax(t / tau)):
    CE:          softmax(s) - onehot(target)
    forward_kl:  tau (q - p)
    reverse_kl:  tau q * (log q - log p - KL(q || p))
    topk_kl:     tau (q - p_k), p_k the teacher's renormalised top-k scattered into V
A final logit soft-cap (Gemma 2) is applied per chunk, and its derivative
1 - (capped / c)^2 chains into the student's gradient. Matmul operands are in
the compute dtype with float32 accumulation; softmaxes and the loss are float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from salt_jax.kd import alm, losses, sparse


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """Static options of the chunked loss (hashable: they select the compiled program)."""

    chunk: int = 256  # sequence positions per chunk (logits held: batch x chunk x vocab per model)
    temperature: float = 1.0  # tau of the KD term
    kd_loss: str = "forward_kl"  # one of losses.KD_LOSSES
    kd_topk: int = 0  # k for topk_kl
    token_select: str = "none"  # one of losses.TOKEN_SELECTIONS: KD only where the teacher is good
    token_select_k: int = 10
    token_select_threshold: float = 0.5
    dtype: Any = jnp.float32  # matmul operand dtype (the model's compute dtype)
    student_softcap: float = 0.0  # the student's final logit soft-cap c (c tanh(z / c)); 0 = none
    teacher_softcap: float = 0.0  # the teacher's (Gemma 2 uses 30)
    unroll: int = 1  # chunks per scan iteration (salt_jax.aot compiles with 2 to cost one chunk)
    sparse: str = "topk"  # how cached sparse teacher targets are read (salt_jax.kd.sparse.KINDS)
    temperature_is_one: bool = False  # set by chunked_loss when tau is the constant 1 (cached KD reuses the CE's softmax)
    alm_temperature: float = 100.0  # across tokenizers: the binarisation temperature of ALM (salt_jax.kd.alm)


def full_kd_value_and_grad(s_logits: jax.Array, t_logits: jax.Array, tau: float, kind: str, topk: int = 0):
    """Per-token KD loss [..] against the teacher's full logits (as `losses.full_kd_per_token`; student first,
    see there) and its gradient w.r.t. the student logits [.., V]."""
    t = t_logits / tau
    s = s_logits / tau
    log_q = jax.nn.log_softmax(s, axis=-1)
    q = jnp.exp(log_q)
    if kind == "forward_kl":
        log_p = jax.nn.log_softmax(t, axis=-1)
        p = jnp.exp(log_p)
        kl = jnp.sum(p * (log_p - log_q), axis=-1)
        grad = q - p
    elif kind == "reverse_kl":
        log_p = jax.nn.log_softmax(t, axis=-1)
        kl = jnp.sum(q * (log_q - log_p), axis=-1)
        grad = q * (log_q - log_p - kl[..., None])
    elif kind == "topk_kl":
        top_t, idx = jax.lax.top_k(t, topk)
        log_pk = jax.nn.log_softmax(top_t, axis=-1)
        pk = jnp.exp(log_pk)
        kl = jnp.sum(pk * (log_pk - jnp.take_along_axis(log_q, idx, axis=-1)), axis=-1)
        scattered = jnp.sum(jax.nn.one_hot(idx, s.shape[-1], dtype=pk.dtype) * pk[..., None], axis=-2)
        grad = q - scattered
    else:
        raise ValueError(f"unknown KD loss {kind!r}")
    return tau * tau * kl, tau * grad


def _chunk(opts: LossOptions, with_grad: bool, w_s, w_t, tau, xs):
    """Sums (and gradients) for one chunk of positions: xs = (h_s, h_t or sparse targets, targets, mask,
    kd_weight)."""
    h_s, h_t, y, m, kw = xs
    dt = opts.dtype
    s = jnp.einsum("bcd,dv->bcv", h_s.astype(dt), w_s.astype(dt), preferred_element_type=jnp.float32)
    if opts.student_softcap:
        s = opts.student_softcap * jnp.tanh(s / opts.student_softcap)
    correct = jnp.sum(m * (jnp.argmax(s, axis=-1) == y))
    if isinstance(h_t, sparse.Targets):  # cached teacher: no teacher logits, no token selection; CE and KD in
        w = kw * m                       # one pass over the logits, their gradients written together
        ce, kd, d_s = sparse.ce_kd_value_and_grad(s, y, h_t, tau, opts.sparse, m - w, w, opts.temperature_is_one)
        sums = {"ntp_sum": jnp.sum(m * ce), "tokens": jnp.sum(m), "correct": correct,
                "loss_sum": jnp.sum(m * ce + w * (kd - ce)), "kd_sum": jnp.sum(m * kd), "kd_weight_sum": jnp.sum(w),
                "kd_tokens": jnp.sum(m * (kw > 0)), "teacher_ntp_sum": -jnp.sum(m * h_t.target_logp)}
        return _chunk_grads(opts, with_grad, w_s, h_s, s, d_s, sums)
    log_q1 = jax.nn.log_softmax(s, axis=-1)
    ce = -jnp.take_along_axis(log_q1, y[..., None], axis=-1)[..., 0]
    sums = {"ntp_sum": jnp.sum(m * ce), "tokens": jnp.sum(m), "correct": correct}
    d_s = jnp.exp(log_q1) - jax.nn.one_hot(y, s.shape[-1], dtype=jnp.float32)
    if h_t is None:
        sums["loss_sum"] = sums["ntp_sum"]
        d_s = m[..., None] * d_s
    else:
        t = jnp.einsum("bcd,dv->bcv", h_t.astype(dt), w_t.astype(dt), preferred_element_type=jnp.float32)
        if opts.teacher_softcap:
            t = opts.teacher_softcap * jnp.tanh(t / opts.teacher_softcap)
        selected = losses.teacher_selection(t, y, opts.token_select, opts.token_select_k,
                                            opts.token_select_threshold)
        w = kw * selected * m
        kd, d_kd = full_kd_value_and_grad(s, t, tau, opts.kd_loss, opts.kd_topk)
        t_ce = -jnp.take_along_axis(jax.nn.log_softmax(t, axis=-1), y[..., None], axis=-1)[..., 0]
        sums.update(loss_sum=jnp.sum(m * ce + w * (kd - ce)), kd_sum=jnp.sum(m * kd), kd_weight_sum=jnp.sum(w),
                    kd_tokens=jnp.sum(m * (kw * selected > 0)), teacher_ntp_sum=jnp.sum(m * t_ce))
        d_s = (m - w)[..., None] * d_s + w[..., None] * d_kd
    return _chunk_grads(opts, with_grad, w_s, h_s, s, d_s, sums)


def _chunk_grads(opts: LossOptions, with_grad: bool, w_s, h_s, s, d_s, sums):
    """(sums, d hidden, d head) of one chunk from its logits s and d loss / d logits d_s."""
    dt = opts.dtype
    if not with_grad:
        return sums, None, None
    if opts.student_softcap:  # d(c tanh(z / c)) / dz = 1 - tanh^2 = 1 - (capped / c)^2
        d_s = d_s * (1.0 - jnp.square(s / opts.student_softcap))
    d_s = d_s.astype(dt)
    d_h = jnp.einsum("bcv,dv->bcd", d_s, w_s.astype(dt), preferred_element_type=jnp.float32).astype(h_s.dtype)
    d_w = jnp.einsum("bcd,bcv->dv", h_s.astype(dt), d_s, preferred_element_type=jnp.float32)
    return sums, d_h, d_w


def _to_chunks(x, chunk: int, n_chunks: int):
    """[b, t, ...] -> [n_chunks, b, chunk, ...], zero-padding t up to n_chunks * chunk."""
    if x is None:
        return None
    if isinstance(x, sparse.Targets):
        return sparse.Targets(*(_to_chunks(a, chunk, n_chunks) for a in x))
    pad = n_chunks * chunk - x.shape[1]
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape(x.shape[0], n_chunks, chunk, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _scan(opts: LossOptions, with_grad: bool, h_s, w_s, h_t, w_t, targets, mask, kd_weight, tau):
    b, t = targets.shape
    chunk = max(1, min(opts.chunk, t))
    n = -(-t // chunk)
    xs = tuple(_to_chunks(x, chunk, n) for x in (h_s, h_t, targets, mask.astype(jnp.float32),
                                                 kd_weight.astype(jnp.float32)))
    keys = ("loss_sum", "ntp_sum", "tokens", "correct")
    if h_t is not None:
        keys += ("kd_sum", "kd_weight_sum", "kd_tokens", "teacher_ntp_sum")
    zero = jnp.zeros((), jnp.float32)
    init = ({k: zero for k in keys}, jnp.zeros(w_s.shape, jnp.float32) if with_grad else None)

    def body(carry, x):
        sums, d_w = carry
        s, d_h, d_w_c = _chunk(opts, with_grad, w_s, w_t, tau, x)
        sums = {k: sums[k] + s[k] for k in keys}
        return (sums, None if d_w is None else d_w + d_w_c), d_h

    (sums, d_w), d_h = jax.lax.scan(body, init, xs, unroll=opts.unroll)
    if with_grad:
        d_h = jnp.moveaxis(d_h, 0, 1).reshape(b, n * chunk, -1)[:, :t]
    return sums, d_h, d_w


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _loss(opts, h_s, w_s, h_t, w_t, targets, mask, kd_weight, tau):
    return _scan(opts, False, h_s, w_s, h_t, w_t, targets, mask, kd_weight, tau)[0]


def _loss_fwd(opts, h_s, w_s, h_t, w_t, targets, mask, kd_weight, tau):
    sums, d_h, d_w = _scan(opts, True, h_s, w_s, h_t, w_t, targets, mask, kd_weight, tau)
    return sums, (d_h, d_w.astype(w_s.dtype), h_t, w_t, targets, mask, kd_weight, tau)


def _zero_cotangent(x):
    """A zero cotangent for a non-differentiated input (float0 for integer arrays such as token ids)."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        return jnp.zeros(x.shape, jax.dtypes.float0)
    return jnp.zeros_like(x)


def _loss_bwd(opts, res, ct):
    d_h, d_w, h_t, w_t, targets, mask, kd_weight, tau = res
    g = ct["loss_sum"]
    zeros = jax.tree.map(_zero_cotangent, (h_t, w_t, targets, mask, kd_weight, tau))
    return ((g * d_h).astype(d_h.dtype), (g * d_w).astype(d_w.dtype), *zeros)


_loss.defvjp(_loss_fwd, _loss_bwd)


def chunked_loss(h_s: jax.Array, w_s: jax.Array, targets: jax.Array, mask: jax.Array,
                 opts: LossOptions = LossOptions(), h_t: jax.Array | sparse.Targets | None = None,
                 w_t: jax.Array | None = None, kd_weight: jax.Array | None = None,
                 temperature: jax.Array | float | None = None) -> dict[str, jax.Array]:
    """Sums of the (SALT) next-token loss over masked positions, from hidden states.

    h_s [b, t, d] and w_s [d, V]: the student's final hidden states and output
    projection; targets [b, t] int; mask [b, t] (0/1). Without a teacher it is
    the plain next-token loss: {"loss_sum", "ntp_sum", "tokens", "correct"}.
    With the teacher's h_t [b, t, d_T] and w_t [d_T, V] and kd_weight [b, t]
    (w_t per position before token selection: w(step) in the KD share, else 0)
    it is sum over tokens of (1 - w) CE + w KD, plus "kd_sum", "kd_weight_sum",
    "kd_tokens" and "teacher_ntp_sum", exactly as the dense path computes them.
    Instead of (h_t, w_t), cached sparse teacher targets (salt_jax.kd.sparse.Targets, read as
    opts.sparse) give the same sums with no teacher logits. `temperature` (traced; default
    opts.temperature) is tau at this step (config.salt.temperature_schedule).
    """
    if isinstance(h_t, sparse.Targets):  # a Python number: known at trace time
        static = opts.temperature if temperature is None else temperature
        opts = dataclasses.replace(opts, temperature_is_one=isinstance(static, (int, float)) and static == 1)
    tau = jnp.asarray(opts.temperature if temperature is None else temperature, jnp.float32)
    if h_t is None:
        kd_weight = jnp.zeros(targets.shape, jnp.float32)
    elif kd_weight is None:
        raise ValueError("chunked_loss: a teacher needs kd_weight")
    return _loss(opts, h_s, w_s, h_t, w_t, targets, mask, kd_weight, tau)


def target_logprobs(h: jax.Array, w: jax.Array, targets: jax.Array, tau, opts: LossOptions = LossOptions(),
                    softcap: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log softmax(z)[target], log softmax(z / tau)[target], argmax(z) == target) per position [b, t], from
    hidden states h [b, t, d] and the output projection w [d, V], one chunk of logits at a time.

    What ALM needs of a model (salt_jax.kd.alm): the student's (with gradients) and the teacher's. Unlike
    `chunked_loss` the gradient is left to autodiff, with each chunk's logits recomputed in the backward pass
    (jax.checkpoint): ALM's gradient at a position depends on its whole chunk's log-likelihood, known only
    after the pass, so it cannot be formed chunk by chunk in the forward pass.
    """
    b, t = targets.shape
    chunk = max(1, min(opts.chunk, t))
    n = -(-t // chunk)
    dt = opts.dtype
    unit = isinstance(tau, (int, float)) and tau == 1  # (known at trace time: one softmax, not two)

    @jax.checkpoint
    def one(h_c, y):
        z = jnp.einsum("bcd,dv->bcv", h_c.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)
        if softcap:
            z = softcap * jnp.tanh(z / softcap)
        z_y = jnp.take_along_axis(z, y[..., None], axis=-1)[..., 0]
        logp1 = z_y - jax.nn.logsumexp(z, axis=-1)
        logp = logp1 if unit else z_y / tau - jax.nn.logsumexp(z / tau, axis=-1)
        return logp1, logp, (jnp.argmax(z, axis=-1) == y).astype(jnp.float32)

    _, out = jax.lax.scan(lambda c, x: (c, one(*x)), None, (_to_chunks(h, chunk, n), _to_chunks(targets, chunk, n)),
                          unroll=opts.unroll)
    return tuple(jnp.moveaxis(o, 0, 1).reshape(b, n * chunk)[:, :t] for o in out)


# ------------------------------------------------------------------------ ALM (across tokenizers), chunked

def _windows(x, chunk: int, n: int, look: int, fill=0):
    """[b, t, ...] -> [n, b, chunk + 2 look, ...]: scan chunk k's positions with `look` positions on each side
    (`fill` beyond the sequence's ends)."""
    pad = [(0, 0), (look, n * chunk - x.shape[1] + look)] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, pad, constant_values=fill)
    idx = jnp.arange(n)[:, None] * chunk + jnp.arange(chunk + 2 * look)[None, :]
    return jnp.moveaxis(x[:, idx], 1, 0)


def _alm_scan(opts: LossOptions, look: int, h_s, w_s, targets, chunks, per_pos, tau, scalars):
    """The fused pass of `aligned_chunked_loss`: sums, d hidden, d head."""
    b, t = targets.shape
    chunk = max(1, min(opts.chunk, t))
    n = -(-t // chunk)
    per_chunk, binarize = scalars
    xs = (_windows(h_s, chunk, n, look), _windows(targets, chunk, n, look), _windows(chunks, chunk, n, look, -1),
          *(_to_chunks(p, chunk, n) for p in per_pos))
    keys = ("loss_sum", "ntp_sum", "kd_sum", "teacher_ntp_sum", "correct")
    zero = jnp.zeros((), jnp.float32)

    def body(carry, x):
        sums, d_w = carry
        h_win, y_win, c_win, m, w, l_t, l_t1, wc, first = x
        dt = opts.dtype
        z = jnp.einsum("bcd,dv->bcv", h_win.astype(dt), w_s.astype(dt), preferred_element_type=jnp.float32)
        if opts.student_softcap:
            z = opts.student_softcap * jnp.tanh(z / opts.student_softcap)
        z_y = jnp.take_along_axis(z, y_win[..., None], axis=-1)[..., 0]
        logp_win = z_y / tau - jax.nn.logsumexp(z / tau, axis=-1)  # every window position's, at tau
        centre = slice(look, look + chunk)
        zc, y, cid = z[:, centre], y_win[:, centre], c_win[:, centre]
        in_chunk = m * (cid >= 0)
        # each centre position's chunk log-likelihood, from the window (a chunk has at most look + 1 positions)
        same = (cid[:, :, None] == c_win[:, None, :]) & (cid[:, :, None] >= 0)
        l_s = jnp.sum(jnp.where(same, logp_win[:, None, :], 0.0), axis=-1)
        div, d_div = jax.vjp(lambda ls: alm.divergence(l_t, ls, opts.kd_loss, binarize), l_s)
        d_div = d_div(jnp.ones_like(div))[0]
        log_q1 = jax.nn.log_softmax(zc, axis=-1)
        ce = -jnp.take_along_axis(log_q1, y[..., None], axis=-1)[..., 0]
        onehot = jax.nn.one_hot(y, zc.shape[-1], dtype=jnp.float32)
        d_ntp = jnp.exp(log_q1) - onehot
        d_alm = d_ntp if opts.temperature_is_one else jax.nn.softmax(zc / tau, axis=-1) - onehot
        # d l_S / d z = (onehot - softmax(z / tau)) / tau at each position of the chunk
        coef = -per_chunk * wc * d_div * in_chunk / tau
        d_s = ((m - w * m)[..., None] * d_ntp + coef[..., None] * d_alm)
        kept = first * (cid >= 0)
        s = {"ntp_sum": jnp.sum(m * ce), "correct": jnp.sum(m * (jnp.argmax(zc, axis=-1) == y)),
             "kd_sum": per_chunk * jnp.sum(kept * div), "teacher_ntp_sum": -jnp.sum(kept * l_t1)}
        s["loss_sum"] = jnp.sum((m - w * m) * ce) + per_chunk * jnp.sum(kept * wc * div)
        s, d_h, d_w_c = _chunk_grads(opts, True, w_s, h_win[:, centre], zc, d_s, s)
        return ({k: sums[k] + s[k] for k in keys}, d_w + d_w_c), d_h

    init = ({k: zero for k in keys}, jnp.zeros(w_s.shape, jnp.float32))
    (sums, d_w), d_h = jax.lax.scan(body, init, xs, unroll=opts.unroll)
    d_h = jnp.moveaxis(d_h, 0, 1).reshape(b, n * chunk, -1)[:, :t]
    return sums, d_h, d_w


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _alm_loss(opts, look, h_s, w_s, targets, chunks, per_pos, tau, scalars):
    return _alm_scan(opts, look, h_s, w_s, targets, chunks, per_pos, tau, scalars)[0]


def _alm_fwd(opts, look, h_s, w_s, targets, chunks, per_pos, tau, scalars):
    sums, d_h, d_w = _alm_scan(opts, look, h_s, w_s, targets, chunks, per_pos, tau, scalars)
    return sums, (d_h, d_w.astype(w_s.dtype), targets, chunks, per_pos, tau, scalars)


def _alm_bwd(opts, look, res, ct):
    d_h, d_w, *rest = res
    g = ct["loss_sum"]
    return ((g * d_h).astype(d_h.dtype), (g * d_w).astype(d_w.dtype), *jax.tree.map(_zero_cotangent, tuple(rest)))


_alm_loss.defvjp(_alm_fwd, _alm_bwd)


def aligned_chunked_loss(h_s: jax.Array, w_s: jax.Array, targets: jax.Array, mask: jax.Array, chunks: jax.Array,
                         teacher, kd_weight: jax.Array, temperature, opts: LossOptions = LossOptions(),
                         look: int = 16) -> dict[str, jax.Array]:
    """The cross-tokenizer sums of salt_jax.kd.alm.mixture_stats from the student's hidden states, one chunk of
    positions at a time, with the gradient formed in the forward pass like `chunked_loss` (no recompute).

    ALM's gradient at a position needs its whole aligned chunk's log-likelihood: each scan step computes the
    logits of its positions and `look` more on each side, so every aligned chunk of at most look + 1 positions
    that touches the step is complete in its window (salt_jax.data.alignment keeps no longer chunk: MAX_CHUNK).
    The cost is 2 look / chunk more of the logits' forward matmul. `teacher`: the teacher's
    salt_jax.kd.alm.ChunkTargets; `chunks` [b, t]: each target's aligned chunk (-1: none).
    """
    tau_static = opts.temperature if temperature is None else temperature
    unit = isinstance(tau_static, (int, float)) and tau_static == 1
    opts = dataclasses.replace(opts, temperature_is_one=unit)
    tau = jnp.asarray(tau_static, jnp.float32)
    m = mask.astype(jnp.float32)
    n = teacher.loglik.shape[1]
    chunks = jnp.where(m > 0, chunks, -1)  # (a masked target is in no chunk, as in alm.mixture_stats)
    in_chunk = m * (chunks >= 0)
    count = alm.chunk_sums(in_chunk, chunks, n)
    valid = count > 0
    tokens, n_chunks, aligned = jnp.sum(m), jnp.sum(valid), jnp.sum(count)
    w_chunk = alm.chunk_sums(kd_weight * in_chunk, chunks, n) / jnp.maximum(count, 1.0)
    at = lambda v: jnp.take_along_axis(v, jnp.maximum(chunks, 0), axis=1)  # noqa: E731 -- chunk value per position
    first = (chunks >= 0) & (chunks != jnp.pad(chunks, [(0, 0), (1, 0)], constant_values=-1)[:, :-1])
    per_pos = (m, kd_weight.astype(jnp.float32), at(teacher.loglik), at(teacher.loglik1), at(w_chunk),
               first.astype(jnp.float32))
    scalars = (tokens / jnp.maximum(n_chunks, 1.0), jnp.float32(opts.alm_temperature))
    sums = _alm_loss(opts, look, h_s, w_s, targets, chunks, per_pos, tau, scalars)
    w = kd_weight * m
    return dict(sums, teacher_ntp_sum=sums["teacher_ntp_sum"] * tokens / jnp.maximum(aligned, 1.0),
                kd_weight_sum=jnp.sum(w), kd_tokens=jnp.sum(in_chunk * (kd_weight > 0)), aligned_tokens=aligned,
                tokens=tokens)
