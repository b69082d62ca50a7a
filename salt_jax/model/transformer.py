"""Llama-style decoder-only Transformer LM (Flax linen), described by one config.

RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention and optional
tied embeddings. The layers are one `nn.scan` over a stacked block, so compile
time does not grow with depth. Every parameter and the main activations carry
logical axis names; `salt_jax.model.sharding` maps them onto the mesh.

The model config fields (see `salt_jax.model.presets`):
    vocab_size, d_model, n_layers, n_heads, n_kv_heads, head_dim, mlp_dim,
    max_len, rope_base, norm_eps, tie_embeddings, param_dtype, dtype, remat, attention,
and the architecture options of `OPTIONS` (defaults: the Llama model above), which
let the one module express the Hugging Face families `salt_jax.hf.convert` reads
(Llama, Qwen2/3, Gemma 2/3, GPT-2): LayerNorm or (1 + w) RMSNorm, biases, GELU
and non-gated MLPs, query/key norms, Gemma's extra norms, embedding scaling,
soft-capping, learned positions and sliding-window layers. Per-layer
differences (local vs global layers) are data scanned with the layers, not
structure. Records of older checkpoints lack these fields: `option` supplies
the defaults.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.ad_checkpoint import checkpoint_name
from flax import linen as nn

from salt_jax.model import attention

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Remat policies by config name; "none" keeps every activation.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keeps each block's attention and MLP outputs (2 x [b, t, d]); recomputes the rest.
    "save_out_proj": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_out"),
}


# The values of the architecture options that name a form (config.model.norm, .mlp, .positions, and the letters
# of .local_layers: local or global).
NORMS = ("rms", "layer")
MLPS = ("gated", "plain")
POSITIONS = ("rope", "learned")
LAYER_LETTERS = ("L", "G")

# Architecture options and their defaults (the Llama-style model); see salt_jax.model.presets for each field.
OPTIONS = {
    "norm": "rms",  # rms | layer (LayerNorm with a bias)
    "norm_plus_one": False,  # norms multiply by (1 + scale) (Gemma)
    "qkv_bias": False,  # biases on the query/key/value projections
    "o_bias": False,  # bias on the attention output projection
    "mlp_bias": False,  # biases on the MLP projections
    "mlp": "gated",  # gated (act(x W_gate) * x W_up) | plain (act(x W_up))
    "activation": "silu",  # silu | gelu_tanh | gelu
    "qk_norm": False,  # RMSNorm over head_dim on queries and keys (Qwen3, Gemma 3)
    "post_norms": False,  # norms on the attention and MLP outputs before the residual add (Gemma 2/3)
    "embed_scale": 1.0,  # input embeddings are multiplied by this (Gemma: sqrt(d_model))
    "attn_scale": 0.0,  # attention score scale; 0 = head_dim ** -0.5
    "attn_softcap": 0.0,  # attention logits -> c * tanh(logits / c); 0 = off
    "final_softcap": 0.0,  # output logits -> c * tanh(logits / c); 0 = off
    "positions": "rope",  # rope | learned (an absolute table of max_len rows, GPT-2)
    "sliding_window": 0,  # local layers attend to the last this-many positions; 0 = no local layers
    "local_layers": "",  # one letter per layer, L (local) or G (global); "" = all local if sliding_window
    "rope_local_base": 0.0,  # rotary base of local layers; 0 = rope_base
}
ACTIVATIONS = {
    "silu": nn.silu,
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu": lambda x: nn.gelu(x, approximate=False),
}


def option(cfg: ml_collections.ConfigDict, name: str) -> Any:
    """An architecture option of a model config, with its default when the config predates it."""
    return cfg.get(name, OPTIONS[name])


def local_layer_flags(cfg: ml_collections.ConfigDict) -> list[bool] | None:
    """Which layers are local (sliding-window); None when all layers are alike."""
    if not option(cfg, "sliding_window"):
        return None
    pattern = option(cfg, "local_layers") or "L" * cfg.n_layers
    flags = [ch == "L" for ch in pattern]
    return None if all(flags) else flags


def dtype_of(name: str) -> Any:
    return DTYPES[name]


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale; statistics in float32.

    `kind="layer"` makes it a LayerNorm (mean removed, learned bias);
    `plus_one` multiplies by (1 + scale), with scale initialised to 0 (Gemma).
    """

    eps: float
    dtype: Any
    param_dtype: Any
    kind: str = "rms"
    plus_one: bool = False

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
        scale = _param(self, "scale", init, (x.shape[-1],), ("norm",), self.param_dtype)
        x32 = x.astype(jnp.float32)
        if self.kind == "layer":
            x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = scale.astype(jnp.float32)
        y = y * (1.0 + scale if self.plus_one else scale)
        if self.kind == "layer":
            y = y + _param(self, "bias", nn.initializers.zeros, (x.shape[-1],), ("norm",),
                           self.param_dtype).astype(jnp.float32)
        return y.astype(self.dtype)


def norm(cfg: ml_collections.ConfigDict, name: str) -> RMSNorm:
    """The config's norm layer (RMSNorm, (1 + w) RMSNorm or LayerNorm) named `name`."""
    return RMSNorm(cfg.norm_eps, dtype_of(cfg.dtype), dtype_of(cfg.param_dtype),
                   kind=option(cfg, "norm"), plus_one=option(cfg, "norm_plus_one"), name=name)


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """cap * tanh(x / cap): bounds logits smoothly to (-cap, cap) (Gemma 2)."""
    return cap * jnp.tanh(x / cap)


def rotary(x: jax.Array, positions: jax.Array, base) -> jax.Array:
    """Rotary position embedding (rotate-half form) on [batch, len, heads, head_dim].

    `base` may be a traced scalar (local and global layers differ under nn.scan).
    """
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions[..., None].astype(jnp.float32) * freq  # [batch, len, half]
    sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary positions.

    `is_local` (a traced bool, one per layer) picks the sliding window and the
    local rotary base when layers differ; None when all layers are alike.

    `decode=True` keeps the keys and values in a "cache" collection sized at
    initialisation (its tokens' length) and appends each call's to it, for
    generation; a negative position marks a padding token, which no query
    attends to.
    """

    cfg: ml_collections.ConfigDict
    decode: bool = False

    @nn.compact
    def __call__(self, x, positions, is_local=None):
        c = self.cfg
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        init = nn.initializers.normal(stddev=c.d_model**-0.5)
        wq = _param(self, "q", init, (c.d_model, c.n_heads, c.head_dim), ("embed", "heads", "head_dim"), pdt)
        wk = _param(self, "k", init, (c.d_model, c.n_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), pdt)
        wv = _param(self, "v", init, (c.d_model, c.n_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), pdt)
        out_init = nn.initializers.normal(stddev=(c.n_heads * c.head_dim) ** -0.5 / (2 * c.n_layers) ** 0.5)
        wo = _param(self, "o", out_init, (c.n_heads, c.head_dim, c.d_model), ("heads", "head_dim", "embed"), pdt)
        q = jnp.einsum("btd,dnh->btnh", x, wq.astype(dt))
        k = jnp.einsum("btd,dnh->btnh", x, wk.astype(dt))
        v = jnp.einsum("btd,dnh->btnh", x, wv.astype(dt))
        if option(c, "qkv_bias"):
            zeros = nn.initializers.zeros
            q = q + _param(self, "q_bias", zeros, (c.n_heads, c.head_dim), ("heads", "head_dim"), pdt).astype(dt)
            k = k + _param(self, "k_bias", zeros, (c.n_kv_heads, c.head_dim), ("kv_heads", "head_dim"),
                           pdt).astype(dt)
            v = v + _param(self, "v_bias", zeros, (c.n_kv_heads, c.head_dim), ("kv_heads", "head_dim"),
                           pdt).astype(dt)
        if option(c, "qk_norm"):
            q = norm(c, "q_norm")(q)
            k = norm(c, "k_norm")(k)
        window, base = option(c, "sliding_window"), c.rope_base
        if is_local is not None:  # layers differ: window and base are per-layer data
            window = jnp.where(is_local, window, c.max_len + x.shape[1] + 1)
            base = jnp.where(is_local, option(c, "rope_local_base") or c.rope_base, c.rope_base)
        elif window:  # every layer is local
            base = option(c, "rope_local_base") or c.rope_base
        if option(c, "positions") == "rope":
            at = jnp.maximum(positions, 0)  # (padding positions are negative in decode mode)
            q, k = rotary(q, at, base), rotary(k, at, base)
        q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", None))
        scale, cap = option(c, "attn_scale") or None, option(c, "attn_softcap")
        if self.decode:
            y = self._cached(q, k, v, positions, scale, cap, window)
        else:
            # Initialisation only needs shapes (and runs on tiny dummy inputs): plain XLA attention, no kernel.
            kernel = "xla" if self.is_initializing() else c.get("attention", "auto")
            y = attention.attend(q, k, v, implementation=kernel, scale=scale, softcap=cap, window=window)
        y = nn.with_logical_constraint(y, ("batch", "length", "act_heads", None))
        out = jnp.einsum("btnh,nhd->btd", y, wo.astype(dt))
        if option(c, "o_bias"):
            out = out + _param(self, "o_bias", nn.initializers.zeros, (c.d_model,), ("norm",), pdt).astype(dt)
        return checkpoint_name(out, "attn_out")

    def _cached(self, q, k, v, positions, scale, cap, window):
        """Appends this call's keys / values / positions to the cache, then attends over all of it."""
        b, t = k.shape[:2]
        initialised = self.has_variable("cache", "k")
        ck = self.variable("cache", "k", jnp.zeros, k.shape, k.dtype)
        cv = self.variable("cache", "v", jnp.zeros, v.shape, v.dtype)
        cpos = self.variable("cache", "pos", lambda: jnp.full((b, t), -1, jnp.int32))
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if not initialised:  # initialisation only sizes the cache (its tokens' length is the cache's)
            return attention.cached_attention(q, k, v, positions, positions, scale=scale, softcap=cap,
                                              window=window)
        at = index.value
        ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, at, 0, 0))
        cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, at, 0, 0))
        cpos.value = jax.lax.dynamic_update_slice(cpos.value, positions.astype(jnp.int32), (0, at))
        index.value = at + t
        return attention.cached_attention(q, ck.value, cv.value, positions, cpos.value, scale=scale,
                                          softcap=cap, window=window)


class MLP(nn.Module):
    """Feed-forward block: gated (SwiGLU / GeGLU) or plain (GPT-2), optional biases."""

    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        init = nn.initializers.normal(stddev=c.d_model**-0.5)
        act = ACTIVATIONS[option(c, "activation")]
        bias = option(c, "mlp_bias")

        def proj(name, w_init, shape, axes, h):
            y = h @ _param(self, name, w_init, shape, axes, pdt).astype(dt)
            if bias:
                b_axes = ("mlp",) if axes[-1] == "mlp" else ("norm",)
                y = y + _param(self, f"{name}_bias", nn.initializers.zeros, shape[-1:], b_axes, pdt).astype(dt)
            return y

        if option(c, "mlp") == "gated":  # (gate first: parameter initialisation order)
            gate = proj("gate", init, (c.d_model, c.mlp_dim), ("embed", "mlp"), x)
            h = act(gate) * proj("up", init, (c.d_model, c.mlp_dim), ("embed", "mlp"), x)
        else:
            h = act(proj("up", init, (c.d_model, c.mlp_dim), ("embed", "mlp"), x))
        h = nn.with_logical_constraint(h, ("batch", "length", "act_mlp"))
        down_init = nn.initializers.normal(stddev=c.mlp_dim**-0.5 / (2 * c.n_layers) ** 0.5)
        return checkpoint_name(proj("down", down_init, (c.mlp_dim, c.d_model), ("mlp", "embed"), h), "mlp_out")


class Block(nn.Module):
    """Pre-norm residual block; shaped (carry, positions[, is_local]) -> (carry, None) for nn.scan.

    With `post_norms` the attention and MLP outputs are normed before the
    residual add (Gemma 2/3).
    """

    cfg: ml_collections.ConfigDict
    decode: bool = False

    @nn.compact
    def __call__(self, x, positions, is_local=None):
        c = self.cfg
        y = Attention(c, self.decode, name="attn")(norm(c, "attn_norm")(x), positions, is_local)
        if option(c, "post_norms"):
            y = norm(c, "attn_post_norm")(y)
        x = x + y
        y = MLP(c, name="mlp")(norm(c, "mlp_norm")(x))
        if option(c, "post_norms"):
            y = norm(c, "mlp_post_norm")(y)
        x = x + y
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        return x, None


class Transformer(nn.Module):
    """Token ids [batch, len] -> logits [batch, len, vocab] (float32).

    `return_hidden=True` returns (final normed hidden states, output projection
    [d_model, vocab]) instead, for losses that apply the projection themselves
    (they must then apply `final_softcap` when the config sets one).
    `decode=True` is the generation mode (salt_jax.eval.engine): `positions`
    must be given, negative ones mark left padding, and each call appends to
    the "cache" collection (apply with mutable=["cache"]).
    """

    cfg: ml_collections.ConfigDict
    # Layers per iteration of the scanned stack (same parameters, same numbers). XLA's cost model counts a
    # loop body once, so salt_jax.aot compiles with 2 to measure what one more layer costs.
    scan_unroll: int = 1
    decode: bool = False  # keep a KV cache (see Attention); generation only

    @nn.compact
    def __call__(self, tokens, positions=None, return_hidden: bool = False):
        c = self.cfg
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        embed = _param(self, "embed", nn.initializers.normal(stddev=0.02), (c.vocab_size, c.d_model),
                       ("vocab", "embed"), pdt)
        # Gather from a whole (all-gathered) table: a gather from a table sharded
        # over d_model cannot produce batch-sharded rows without a full remat.
        table = nn.with_logical_constraint(embed.astype(dt), (None, None))
        x = jnp.take(table, tokens, axis=0)
        if option(c, "embed_scale") != 1.0:
            x = x * jnp.asarray(option(c, "embed_scale"), dt)
        if option(c, "positions") == "learned":
            pos = _param(self, "pos_embed", nn.initializers.normal(stddev=0.01), (c.max_len, c.d_model),
                         (None, "embed"), pdt)
            at = jnp.clip(positions, 0, c.max_len - 1)  # (padding in decode mode is negative)
            x = x + jnp.take(nn.with_logical_constraint(pos.astype(dt), (None, None)), at, axis=0)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))

        block = Block
        if c.remat != "none" and not self.decode:
            block = nn.remat(Block, policy=REMAT_POLICIES[c.remat], prevent_cse=False)
        flags = local_layer_flags(c)
        stack = nn.scan(
            block,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast if flags is None else (nn.broadcast, 0),
            length=c.n_layers,
            unroll=self.scan_unroll,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        if flags is None:
            x, _ = stack(c, self.decode, name="layers")(x, positions)
        else:  # local / global layers differ: one flag per layer, scanned with the layers
            x, _ = stack(c, self.decode, name="layers")(x, positions, jnp.asarray(flags))
        hidden = norm(c, "final_norm")(x)

        if c.tie_embeddings:
            head = embed.T
        else:
            head = _param(self, "lm_head", nn.initializers.normal(stddev=c.d_model**-0.5),
                          (c.d_model, c.vocab_size), ("embed", "vocab"), pdt)
        if return_hidden:
            return hidden, head
        logits = output_logits(hidden, head, dt)
        if option(c, "final_softcap"):
            logits = softcap(logits, option(c, "final_softcap"))
        return logits


def output_logits(hidden: jax.Array, head: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Final hidden states [b, t, d] times the output projection [d, V] -> float32 logits."""
    logits = jnp.einsum("btd,dv->btv", hidden.astype(dtype), head.astype(dtype),
                        preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "act_vocab"))


def abstract_params(model: nn.Module) -> Any:
    """The model's parameters as an abstract tree of boxed leaves (shapes, dtypes, logical axes)."""
    return jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 8), jnp.int32))["params"], jax.random.key(0))
