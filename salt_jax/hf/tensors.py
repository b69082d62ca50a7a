"""Tensor rules: each Hugging Face tensor name <-> one or more salt_jax parameters.

A `Rule` holds both directions of one tensor's transform (torch's [out, in]
layout and fused projections <-> our [in, ..., out] stacked layers).
`decoder_rules` covers the Llama-like families, `gpt2_rules` GPT-2. Imports
salt_jax.model only.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from salt_jax.model.transformer import option


@dataclasses.dataclass
@dataclasses.dataclass
class Rule:
    """One HF tensor <-> one or more salt_jax parameters (paths from the params root).

    `hf` may contain {i} (the layer: the parameters are stacked [n_layers, ...]).
    `to_salt(array) -> tuple of arrays` and `to_hf(*arrays) -> array` are inverses;
    `hf_shape` is the HF tensor's shape the config implies.
    """

    hf: str
    salt: tuple[tuple[str, ...], ...]
    hf_shape: tuple[int, ...]
    to_salt: Callable[[np.ndarray], tuple]
    to_hf: Callable[..., np.ndarray]

    @property
    def layered(self) -> bool:
        return "{i}" in self.hf


def _same(name: str, salt: tuple[str, ...], shape) -> Rule:
    return Rule(name, (salt,), tuple(shape), lambda a: (a,), lambda a: a)


def _linear_in(name: str, salt, d: int, heads: int, h: int) -> Rule:
    """torch Linear [heads*h, d] -> ours [d, heads, h]."""
    return Rule(name, (salt,), (heads * h, d), lambda a: (a.T.reshape(d, heads, h),),
                lambda a: np.ascontiguousarray(a.reshape(d, heads * h).T))


def _transposed(name: str, salt, shape_out_in) -> Rule:
    """torch Linear [out, in] -> ours [in, out]."""
    return Rule(name, (salt,), tuple(shape_out_in), lambda a: (a.T,), lambda a: np.ascontiguousarray(a.T))


def _bias(name: str, salt, shape) -> Rule:
    """A flat HF bias -> ours `shape` (e.g. [heads, head_dim])."""
    size = int(np.prod(shape))
    return Rule(name, (salt,), (size,), lambda a: (a.reshape(shape),), lambda a: a.reshape(size))


def decoder_rules(c, model_prefix: str = "model.") -> list[Rule]:
    """Rules of the Llama / Qwen / Gemma layout (q/k/v/o_proj, gate/up/down_proj, named norms)."""
    d, n, kv, h, f = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.mlp_dim
    L = f"{model_prefix}layers.{{i}}."
    attn, mlp = ("layers", "attn"), ("layers", "mlp")
    rules = [
        _same(f"{model_prefix}embed_tokens.weight", ("embed",), (c.vocab_size, d)),
        _same(L + "input_layernorm.weight", ("layers", "attn_norm", "scale"), (d,)),
        _linear_in(L + "self_attn.q_proj.weight", attn + ("q",), d, n, h),
        _linear_in(L + "self_attn.k_proj.weight", attn + ("k",), d, kv, h),
        _linear_in(L + "self_attn.v_proj.weight", attn + ("v",), d, kv, h),
        Rule(L + "self_attn.o_proj.weight", (attn + ("o",),), (d, n * h), lambda a: (a.T.reshape(n, h, d),),
             lambda a: np.ascontiguousarray(a.reshape(n * h, d).T)),
        _transposed(L + "mlp.gate_proj.weight", mlp + ("gate",), (f, d)),
        _transposed(L + "mlp.up_proj.weight", mlp + ("up",), (f, d)),
        _transposed(L + "mlp.down_proj.weight", mlp + ("down",), (d, f)),
        _same(f"{model_prefix}norm.weight", ("final_norm", "scale"), (d,)),
    ]
    if option(c, "post_norms"):  # Gemma: post_attention_layernorm is the attention output's norm
        rules += [_same(L + "post_attention_layernorm.weight", ("layers", "attn_post_norm", "scale"), (d,)),
                  _same(L + "pre_feedforward_layernorm.weight", ("layers", "mlp_norm", "scale"), (d,)),
                  _same(L + "post_feedforward_layernorm.weight", ("layers", "mlp_post_norm", "scale"), (d,))]
    else:
        rules.append(_same(L + "post_attention_layernorm.weight", ("layers", "mlp_norm", "scale"), (d,)))
    if option(c, "qkv_bias"):
        rules += [_bias(L + "self_attn.q_proj.bias", attn + ("q_bias",), (n, h)),
                  _bias(L + "self_attn.k_proj.bias", attn + ("k_bias",), (kv, h)),
                  _bias(L + "self_attn.v_proj.bias", attn + ("v_bias",), (kv, h))]
    if option(c, "o_bias"):
        rules.append(_same(L + "self_attn.o_proj.bias", attn + ("o_bias",), (d,)))
    if option(c, "mlp_bias"):
        rules += [_same(L + "mlp.gate_proj.bias", mlp + ("gate_bias",), (f,)),
                  _same(L + "mlp.up_proj.bias", mlp + ("up_bias",), (f,)),
                  _same(L + "mlp.down_proj.bias", mlp + ("down_bias",), (d,))]
    if option(c, "qk_norm"):
        rules += [_same(L + "self_attn.q_norm.weight", attn + ("q_norm", "scale"), (h,)),
                  _same(L + "self_attn.k_norm.weight", attn + ("k_norm", "scale"), (h,))]
    if not c.tie_embeddings:
        rules.append(_transposed("lm_head.weight", ("lm_head",), (c.vocab_size, d)))
    return rules


def gpt2_rules(c, prefix: str = "transformer.") -> list[Rule]:
    """GPT-2: Conv1D weights are already [in, out]; q/k/v are one fused c_attn."""
    d, n, h, f = c.d_model, c.n_heads, c.head_dim, c.mlp_dim
    L = f"{prefix}h.{{i}}."
    attn, mlp = ("layers", "attn"), ("layers", "mlp")
    qkv = (attn + ("q",), attn + ("k",), attn + ("v",))
    qkv_bias = (attn + ("q_bias",), attn + ("k_bias",), attn + ("v_bias",))
    rules = [
        _same(f"{prefix}wte.weight", ("embed",), (c.vocab_size, d)),
        _same(f"{prefix}wpe.weight", ("pos_embed",), (c.max_len, d)),
        Rule(L + "attn.c_attn.weight", qkv, (d, 3 * d),
             lambda a: tuple(p.reshape(d, n, h) for p in np.split(a, 3, axis=1)),
             lambda q, k, v: np.concatenate([x.reshape(d, n * h) for x in (q, k, v)], axis=1)),
        Rule(L + "attn.c_attn.bias", qkv_bias, (3 * d,), lambda a: tuple(p.reshape(n, h) for p in np.split(a, 3)),
             lambda q, k, v: np.concatenate([x.reshape(n * h) for x in (q, k, v)])),
        Rule(L + "attn.c_proj.weight", (attn + ("o",),), (d, d), lambda a: (a.reshape(n, h, d),),
             lambda a: a.reshape(n * h, d)),
        _same(L + "attn.c_proj.bias", attn + ("o_bias",), (d,)),
        _same(L + "mlp.c_fc.weight", mlp + ("up",), (d, f)),
        _same(L + "mlp.c_fc.bias", mlp + ("up_bias",), (f,)),
        _same(L + "mlp.c_proj.weight", mlp + ("down",), (f, d)),
        _same(L + "mlp.c_proj.bias", mlp + ("down_bias",), (d,)),
    ]
    for hf_norm, salt_norm in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
        rules += [_same(L + f"{hf_norm}.weight", ("layers", salt_norm, "scale"), (d,)),
                  _same(L + f"{hf_norm}.bias", ("layers", salt_norm, "bias"), (d,))]
    rules += [_same(f"{prefix}ln_f.weight", ("final_norm", "scale"), (d,)),
              _same(f"{prefix}ln_f.bias", ("final_norm", "bias"), (d,))]
    if not c.tie_embeddings:
        rules.append(_transposed("lm_head.weight", ("lm_head",), (c.vocab_size, d)))
    return rules
