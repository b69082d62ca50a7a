"""Causal self-attention kernels by backend, behind one function.

`attend` picks, per `implementation`:
    "auto"  -> cuDNN flash attention on GPU, splash attention on TPU, XLA on CPU;
    "cudnn" / "splash" / "xla" -> that one.
A kernel that refuses a shape or dtype (cuDNN wants bf16/fp16 and head_dim a
multiple of 8 up to 256; splash wants lengths that are multiples of its block)
falls back to XLA at trace time, with one log line saying why; the numbers are
the same, only the speed differs.

Options the XLA path supports and kernels may not: attention-logit soft-capping
(Gemma 2) and a sliding window (Gemma, Qwen local layers). Soft-capping always
takes the XLA path; a sliding window is passed to cuDNN as a local window.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from salt_jax.model.sharding import BATCH_AXES  # the mesh axes the batch is split over

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logging.info("%s", message)


def default_implementation(platform: str | None = None) -> str:
    """The fastest kernel for a backend: cudnn on GPU, splash on TPU, xla elsewhere."""
    platform = platform or jax.default_backend()
    return {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(platform, "xla")


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, softcap: float = 0.0,
                  window: int = 0) -> jax.Array:
    """Reference causal GQA attention written out in jnp: softmax in float32.

    q [b, t, n, h], k / v [b, t, kv, h] with n a multiple of kv. `softcap` > 0
    applies softcap * tanh(scores / softcap); `window` > 0 lets position i see
    only positions (i - window, i].
    """
    b, t, n, h = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, n // kv, h)
    scores = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if softcap > 0:
        scores = softcap * jnp.tanh(scores / softcap)
    i = jnp.arange(t)[:, None]
    j = jnp.arange(t)[None, :]
    allowed = j <= i
    if not isinstance(window, int) or window > 0:  # a traced window (per-layer data under nn.scan) too
        allowed &= j > i - window
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    y = jnp.einsum("bkgts,bskh->btkgh", probs, v, preferred_element_type=jnp.float32)
    return y.reshape(b, t, n, h).astype(q.dtype)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_pos: jax.Array, k_pos: jax.Array, *,
                     scale: float | None, softcap: float = 0.0, window: int | jax.Array = 0) -> jax.Array:
    """Attention of new queries over a KV cache, masked by positions rather than by slots (generation).

    q [b, t, n, h] at positions q_pos [b, t]; k / v [b, s, kv, h] at k_pos
    [b, s]. A query sees the keys at positions 0 <= k_pos <= q_pos (and within
    `window` when set): negative positions are padding and empty cache slots.
    A query without any visible key (padding) gets a uniform average, never NaN.
    """
    b, t, n, h = q.shape
    kv = k.shape[2]
    scale = h ** -0.5 if scale is None else scale
    qg = q.reshape(b, t, kv, n // kv, h)
    scores = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if softcap > 0:
        scores = softcap * jnp.tanh(scores / softcap)
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]  # [b, t, 1], [b, 1, s]
    allowed = (kp >= 0) & (kp <= qp)
    if not isinstance(window, int) or window > 0:
        allowed &= kp > qp - window
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    y = jnp.einsum("bkgts,bskh->btkgh", probs, v, preferred_element_type=jnp.float32)
    return y.reshape(b, t, n, h).astype(q.dtype)


def _cudnn(q, k, v, scale, window):
    local = (window - 1, 0) if window > 0 else None
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, local_window_size=local,
                                        implementation="cudnn")


def _splash(q, k, v, scale, window):
    """Splash attention (Pallas TPU kernel) per batch row; GQA as one MQA call per KV head.

    A Pallas call cannot be partitioned by GSPMD, so under a sharded mesh the
    kernel runs inside shard_map (see `per_shard`).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    t = q.shape[1]
    group = q.shape[2] // k.shape[2]  # query heads per KV head: the same in every head shard
    if window > 0:
        mask = sm.LocalMask((t, t), window_size=(window - 1, 0), offset=0)
    else:
        mask = sm.CausalMask((t, t))
    kernel = sk.make_splash_mqa_single_device(mask=sm.MultiHeadMask([mask] * group))

    def one_row(qr, kr, vr):  # qr [t, n, h], kr / vr [t, kv, h] (this shard's heads)
        kv, h = kr.shape[1], kr.shape[2]
        qg = (qr * scale).reshape(t, kv, group, h).transpose(1, 2, 0, 3)  # [kv, group, t, h]
        kg, vg = kr.transpose(1, 0, 2), vr.transpose(1, 0, 2)  # [kv, t, h]
        out = jax.vmap(kernel)(qg, kg, vg)  # [kv, group, t, h]
        return out.transpose(2, 0, 1, 3).reshape(t, qr.shape[1], h)

    return per_shard(jax.vmap(one_row), q, k, v)


def per_shard(fn, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Runs attention `fn` (q, k, v -> out, all [b, t, heads, h]) on each device's block of the mesh.

    Rows are split over the batch axes and heads over `tensor` (when it divides
    both the query and the KV heads; otherwise every tensor shard attends all
    heads of its rows). Without a mesh (or on one device) it is `fn` itself.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v)
    tensor = mesh.shape.get("tensor", 1)
    heads = "tensor" if tensor > 1 and q.shape[2] % tensor == 0 and k.shape[2] % tensor == 0 else None
    spec = jax.sharding.PartitionSpec(BATCH_AXES, None, heads, None)
    return jax.shard_map(fn, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str = "auto", scale: float | None = None,
           softcap: float = 0.0, window: int | jax.Array = 0) -> jax.Array:
    """Causal grouped-query attention [b, t, n, h] x [b, t, kv, h] -> [b, t, n, h].

    `window` may be a traced int (local and global layers scanned together).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    impl = default_implementation() if implementation == "auto" else implementation
    if softcap > 0 and impl != "xla":
        _warn_once(f"attention: soft-capping needs the XLA path; not using {impl}")
        impl = "xla"
    traced_window = not isinstance(window, int)  # differs per scanned layer: only the XLA path takes it
    if traced_window and impl != "xla":
        _warn_once(f"attention: a per-layer sliding window needs the XLA path; not using {impl}")
        impl = "xla"
    if impl == "xla":
        if traced_window or window > 0 or softcap > 0:
            return xla_attention(q, k, v, scale=scale, softcap=softcap, window=window)
        return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, implementation="xla")
    kernel = {"cudnn": _cudnn, "splash": _splash}[impl]
    try:
        return kernel(q, k, v, scale, window)
    except Exception as e:  # kernels raise ValueError / NotImplementedError / RuntimeError on refused shapes
        _warn_once(f"attention: {impl} refused q{tuple(q.shape)} {q.dtype} ({type(e).__name__}: "
                   f"{str(e).splitlines()[0][:160] if str(e) else ''}); using XLA")
        return attend(q, k, v, implementation="xla", scale=scale, softcap=softcap, window=window)
