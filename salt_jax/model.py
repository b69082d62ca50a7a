"""Llama-style decoder-only Transformer LM (Flax linen), described by one config.

RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention and optional
tied embeddings. The layers are one `nn.scan` over a stacked block, so compile
time does not grow with depth. Every parameter and the main activations carry
logical axis names; `salt_jax.sharding` maps them onto the mesh.

The model config fields (see `salt_jax.presets`):
    vocab_size, d_model, n_layers, n_heads, n_kv_heads, head_dim, mlp_dim,
    max_len, rope_base, norm_eps, tie_embeddings, param_dtype, dtype, remat, attention.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.ad_checkpoint import checkpoint_name
from flax import linen as nn

from salt_jax import attention

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Remat policies by config name; "none" keeps every activation.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keeps each block's attention and MLP outputs (2 x [b, t, d]); recomputes the rest.
    "save_out_proj": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_out"),
}


def dtype_of(name: str) -> Any:
    return DTYPES[name]


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale; statistics in float32."""

    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("norm",), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


def rotary(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding (rotate-half form) on [batch, len, heads, head_dim]."""
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions[..., None].astype(jnp.float32) * freq  # [batch, len, half]
    sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary positions."""

    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x, positions):
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
        q = nn.with_logical_constraint(rotary(q, positions, c.rope_base), ("batch", "length", "act_heads", None))
        k = rotary(k, positions, c.rope_base)
        y = attention.attend(q, k, v, implementation=c.get("attention", "auto"))
        y = nn.with_logical_constraint(y, ("batch", "length", "act_heads", None))
        return checkpoint_name(jnp.einsum("btnh,nhd->btd", y, wo.astype(dt)), "attn_out")


class MLP(nn.Module):
    """SwiGLU feed-forward block."""

    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        init = nn.initializers.normal(stddev=c.d_model**-0.5)
        w_gate = _param(self, "gate", init, (c.d_model, c.mlp_dim), ("embed", "mlp"), pdt)
        w_up = _param(self, "up", init, (c.d_model, c.mlp_dim), ("embed", "mlp"), pdt)
        down_init = nn.initializers.normal(stddev=c.mlp_dim**-0.5 / (2 * c.n_layers) ** 0.5)
        w_down = _param(self, "down", down_init, (c.mlp_dim, c.d_model), ("mlp", "embed"), pdt)
        h = nn.silu(x @ w_gate.astype(dt)) * (x @ w_up.astype(dt))
        h = nn.with_logical_constraint(h, ("batch", "length", "act_mlp"))
        return checkpoint_name(h @ w_down.astype(dt), "mlp_out")


class Block(nn.Module):
    """Pre-norm residual block; shaped (carry, positions) -> (carry, None) for nn.scan."""

    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x, positions):
        c = self.cfg
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        h = RMSNorm(c.norm_eps, dt, pdt, name="attn_norm")(x)
        x = x + Attention(c, name="attn")(h, positions)
        h = RMSNorm(c.norm_eps, dt, pdt, name="mlp_norm")(x)
        x = x + MLP(c, name="mlp")(h)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        return x, None


class Transformer(nn.Module):
    """Token ids [batch, len] -> logits [batch, len, vocab] (float32).

    `return_hidden=True` returns (final normed hidden states, output projection
    [d_model, vocab]) instead, for losses that apply the projection themselves.
    """

    cfg: ml_collections.ConfigDict

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
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))

        block = Block
        if c.remat != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[c.remat], prevent_cse=False)
        stack = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=c.n_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(c, name="layers")(x, positions)
        hidden = RMSNorm(c.norm_eps, dt, pdt, name="final_norm")(x)

        if c.tie_embeddings:
            head = embed.T
        else:
            head = _param(self, "lm_head", nn.initializers.normal(stddev=c.d_model**-0.5),
                          (c.d_model, c.vocab_size), ("embed", "vocab"), pdt)
        if return_hidden:
            return hidden, head
        return output_logits(hidden, head, dt)


def output_logits(hidden: jax.Array, head: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Final hidden states [b, t, d] times the output projection [d, V] -> float32 logits."""
    logits = jnp.einsum("btd,dv->btv", hidden.astype(dtype), head.astype(dtype),
                        preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "act_vocab"))


def param_count(cfg: ml_collections.ConfigDict) -> int:
    """Closed-form parameter count of a model config."""
    d, v, f = cfg.d_model, cfg.vocab_size, cfg.mlp_dim
    attn = d * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    per_layer = 2 * d + attn + 3 * d * f
    embed = v * d * (1 if cfg.tie_embeddings else 2)
    return embed + cfg.n_layers * per_layer + d


def flops_per_token(cfg: ml_collections.ConfigDict, seq_len: int) -> float:
    """Forward FLOPs per token: 2 * (matmul params) + causal attention scores and mix.

    2 * N_matmul counts every weight matmul including the output projection (the
    input embedding is a gather and costs nothing); attention adds
    2 * 2 * n_layers * n_heads * head_dim * seq_len / 2 (QK^T and AV, causal half).
    A training step costs 3x this (forward + backward).
    """
    d, f = cfg.d_model, cfg.mlp_dim
    matmul = cfg.n_layers * (d * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + 3 * d * f)
    matmul += d * cfg.vocab_size
    attn = 2 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return 2.0 * matmul + attn
