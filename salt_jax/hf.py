"""Hugging Face interop: import a local HF model directory, export a trained student.

    python -m salt_jax.hf import --hf-dir DIR --out CKPT   # -> a teacher checkpoint (config.salt.teacher=CKPT)
    python -m salt_jax.hf export --workdir RUN --out DIR   # -> config.json + safetensors (+ tokenizer files)

Families: Llama (incl. SmolLM2), Qwen2, Qwen3, Gemma 2, Gemma 3 (text) and
GPT-2. Each family is two config mappings (HF config.json <-> the salt_jax
model config's sizes and architecture options) and a table of tensor rules
(HF tensor name <-> salt_jax parameter, with the transposes and reshapes
between torch's [out, in] layout and ours). Import streams: one tensor is read
at a time from its safetensors shard (memory-mapped), transformed, written into
its slot of the stacked [layers, ...] host array of one parameter, and that
parameter is placed straight into its sharding before the next is read.

Nothing here imports torch or transformers; safetensors (numpy API, bf16 via
ml_dtypes) and tokenizers are imported where used.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import shutil
from typing import Any, Callable

import ml_collections
import numpy as np

from salt_jax.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")
# Buffers some checkpoints carry that are not parameters.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "gelu": "gelu"}
_SIZE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim", "max_len",
                "rope_base", "norm_eps", "tie_embeddings")


# ----------------------------------------------------------------------------- reading a directory

def is_hf_dir(path: str) -> bool:
    """Whether `path` looks like a Hugging Face model directory (config.json + *.safetensors)."""
    return (os.path.isfile(os.path.join(path, "config.json"))
            and bool(glob.glob(os.path.join(path, "*.safetensors"))))


def read_hf_config(hf_dir: str) -> dict:
    """The parsed config.json of `hf_dir`, or a clear error."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise UserError(f"{hf_dir}: no such directory; give a local Hugging Face model directory")
    try:
        with open(path) as fh:
            return json.load(fh)
    except OSError:
        raise UserError(f"{path}: missing; a Hugging Face model directory has config.json and "
                        "*.safetensors (save_pretrained writes both)") from None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


class SafetensorsReader:
    """Tensors by name from a directory's safetensors files (one shard or an index), read one at a time."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
        if not files:
            raise UserError(f"{hf_dir}: no *.safetensors files; save the model with save_pretrained "
                            "(safe_serialization, the default) or convert its .bin weights to safetensors")
        self._stack = contextlib.ExitStack()
        self.where: dict[str, Any] = {}
        for path in files:
            try:
                handle = self._stack.enter_context(safe_open(path, framework="numpy"))
            except Exception as e:  # safetensors raises its own error types on corrupt files
                self.close()
                raise UserError(f"{path}: not a readable safetensors file ({e})") from None
            for name in handle.keys():
                self.where[name] = (handle, path)
        self.used: set[str] = set()

    def names(self) -> set[str]:
        return set(self.where)

    def get(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        """Tensor `name` as a host array, checked against the shape the config implies."""
        if name not in self.where:
            raise UserError(f"tensor {name!r} is missing from the safetensors files; the checkpoint does not "
                            "match its config.json")
        handle, path = self.where[name]
        array = handle.get_tensor(name)
        if tuple(array.shape) != tuple(expected_shape):
            raise UserError(f"{path}: tensor {name!r} has shape {tuple(array.shape)}, the config implies "
                            f"{tuple(expected_shape)}; the weights do not match config.json")
        self.used.add(name)
        return array

    def close(self) -> None:
        self._stack.close()


# ----------------------------------------------------------------------------- config mapping

def _field(hf: dict, name: str, default: Any = None) -> Any:
    value = hf.get(name, default)
    return default if value is None else value


def _unsupported(field: str, value: Any, what: str) -> UserError:
    return UserError(f"config.json: {field}={value!r} is not supported ({what})")


def _rope_theta(hf: dict, default: float, layer_type: str | None = None) -> float:
    """The rotary base, from v5 `rope_parameters` (per layer type for Gemma 3) or v4 `rope_theta` / `rope_scaling`."""
    params = hf.get("rope_parameters") or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    scaling = hf.get("rope_scaling") or {}
    if layer_type == "sliding_attention":
        scaling = {}  # (v4 Gemma 3 scales only its global layers)
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise _unsupported("rope_parameters.rope_type" if params.get("rope_type") else "rope_scaling.rope_type",
                           rope_type, "only the default rotary embedding is implemented")
    if float(_field(hf, "partial_rotary_factor", 1.0)) != 1.0:
        raise _unsupported("partial_rotary_factor", hf["partial_rotary_factor"], "rotary on all of head_dim only")
    if layer_type == "sliding_attention" and "rope_theta" not in params:
        return float(_field(hf, "rope_local_base_freq", default))
    return float(params.get("rope_theta", _field(hf, "rope_theta", default)))


def _activation(hf: dict, field: str, default: str) -> str:
    act = _field(hf, field, default)
    if act not in ACTIVATIONS:
        raise _unsupported(field, act, f"use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def _layer_pattern(hf: dict, n_layers: int) -> tuple[int, str]:
    """(sliding_window, local_layers) from `layer_types` (v5) or Qwen's use_sliding_window / max_window_layers."""
    types = hf.get("layer_types")
    window = int(_field(hf, "sliding_window", 0))
    if types is None and hf.get("use_sliding_window"):
        types = ["sliding_attention" if i >= int(_field(hf, "max_window_layers", 0)) else "full_attention"
                 for i in range(n_layers)]
    if types is None or not window:
        return 0, ""
    if len(types) != n_layers or not set(types) <= {"sliding_attention", "full_attention"}:
        raise _unsupported("layer_types", types, "one of sliding_attention / full_attention per layer")
    if hf.get("model_type") in ("qwen2", "qwen3") and not hf.get("use_sliding_window"):
        return 0, ""
    pattern = "".join("L" if t == "sliding_attention" else "G" for t in types)
    if "L" not in pattern:
        return 0, ""
    return window, "" if "G" not in pattern else pattern


def _common(hf: dict, tie_default: bool) -> dict:
    """Sizes shared by the rotary families (Llama, Qwen, Gemma)."""
    d, n = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    return {
        "vocab_size": int(hf["vocab_size"]), "d_model": d, "n_layers": int(hf["num_hidden_layers"]), "n_heads": n,
        "n_kv_heads": int(_field(hf, "num_key_value_heads", n)), "head_dim": int(_field(hf, "head_dim", d // n)),
        "mlp_dim": int(hf["intermediate_size"]), "max_len": int(_field(hf, "max_position_embeddings", 2048)),
        "norm_eps": float(_field(hf, "rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(_field(hf, "tie_word_embeddings", tie_default)),
    }


def _llama_from_hf(hf: dict) -> dict:
    out = _common(hf, tie_default=False)
    bias = bool(_field(hf, "attention_bias", False))
    return dict(out, rope_base=_rope_theta(hf, 10000.0), qkv_bias=bias, o_bias=bias,
                mlp_bias=bool(_field(hf, "mlp_bias", False)), activation=_activation(hf, "hidden_act", "silu"))


def _qwen2_from_hf(hf: dict) -> dict:
    out = _common(hf, tie_default=False)
    window, pattern = _layer_pattern(hf, out["n_layers"])
    return dict(out, rope_base=_rope_theta(hf, 10000.0), qkv_bias=True,
                activation=_activation(hf, "hidden_act", "silu"), sliding_window=window, local_layers=pattern)


def _qwen3_from_hf(hf: dict) -> dict:
    out = _qwen2_from_hf(hf)
    bias = bool(_field(hf, "attention_bias", False))
    return dict(out, qkv_bias=bias, o_bias=bias, qk_norm=True)


def _gemma2_from_hf(hf: dict) -> dict:
    out = _common(hf, tie_default=True)
    if hf.get("layer_types") is None:  # v4 configs: Gemma 2 alternates, Gemma 3 has sliding_window_pattern
        every = int(_field(hf, "sliding_window_pattern", 6 if hf.get("model_type") == "gemma3_text" else 2))
        hf = dict(hf, layer_types=["sliding_attention" if (i + 1) % every else "full_attention"
                                   for i in range(out["n_layers"])])
    window, pattern = _layer_pattern(hf, out["n_layers"])
    if hf.get("use_bidirectional_attention"):
        raise _unsupported("use_bidirectional_attention", True, "causal attention only")
    return dict(out, rope_base=_rope_theta(hf, 10000.0), norm_plus_one=True, post_norms=True,
                activation=_activation(hf, "hidden_activation", _field(hf, "hidden_act", "gelu_pytorch_tanh")),
                embed_scale=float(out["d_model"]) ** 0.5,
                attn_scale=float(_field(hf, "query_pre_attn_scalar", 256)) ** -0.5,
                attn_softcap=_softcap(hf, "attn_logit_softcapping", 50.0),
                final_softcap=_softcap(hf, "final_logit_softcapping", 30.0),
                sliding_window=window, local_layers=pattern)


def _softcap(hf: dict, field: str, gemma2_default: float) -> float:
    """A soft-cap: absent -> the family's default (Gemma 2 caps, Gemma 3 does not); null -> off."""
    default = gemma2_default if hf.get("model_type") == "gemma2" else None
    value = hf.get(field, default)
    return float(value or 0.0)


def _gemma3_from_hf(hf: dict) -> dict:
    out = _gemma2_from_hf(hf)
    return dict(out, qk_norm=True, rope_base=_rope_theta(hf, 1_000_000.0, "full_attention"),
                rope_local_base=_rope_theta(hf, 10_000.0, "sliding_attention"))


def _gpt2_from_hf(hf: dict) -> dict:
    for field, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
        if bool(_field(hf, field, ok)) != ok:
            raise _unsupported(field, hf[field], f"only {field}={ok} is implemented")
    d, n = int(hf["n_embd"]), int(hf["n_head"])
    return {"vocab_size": int(hf["vocab_size"]), "d_model": d, "n_layers": int(hf["n_layer"]), "n_heads": n,
            "n_kv_heads": n, "head_dim": d // n, "mlp_dim": int(_field(hf, "n_inner", 4 * d)),
            "max_len": int(_field(hf, "n_positions", 1024)), "norm_eps": float(_field(hf, "layer_norm_epsilon", 1e-5)),
            "tie_embeddings": bool(_field(hf, "tie_word_embeddings", True)), "rope_base": 10000.0, "norm": "layer",
            "qkv_bias": True, "o_bias": True, "mlp_bias": True, "mlp": "plain", "positions": "learned",
            "activation": _activation(hf, "activation_function", "gelu_new")}


def _rope_to_hf(theta: float) -> dict:
    return {"rope_theta": theta, "rope_parameters": {"rope_type": "default", "rope_theta": theta}}


def _hf_sizes(c) -> dict:
    return {"vocab_size": c.vocab_size, "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
            "intermediate_size": c.mlp_dim, "max_position_embeddings": c.max_len, "rms_norm_eps": c.norm_eps,
            "tie_word_embeddings": bool(c.tie_embeddings)}


def _act_to_hf(name: str, gemma: bool = False) -> str:
    return {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh" if gemma else "gelu_new", "gelu": "gelu"}[name]


def _layer_types(c) -> list[str]:
    from salt_jax.model import option

    pattern = option(c, "local_layers") or ("L" if option(c, "sliding_window") else "G") * c.n_layers
    return ["sliding_attention" if ch == "L" else "full_attention" for ch in pattern]


def _llama_to_hf(c) -> dict:
    from salt_jax.model import option

    return dict(_hf_sizes(c), **_rope_to_hf(c.rope_base), attention_bias=bool(option(c, "qkv_bias")),
                mlp_bias=bool(option(c, "mlp_bias")), hidden_act=_act_to_hf(option(c, "activation")))


def _qwen2_to_hf(c) -> dict:
    from salt_jax.model import option

    window = option(c, "sliding_window")
    return dict(_hf_sizes(c), **_rope_to_hf(c.rope_base), hidden_act=_act_to_hf(option(c, "activation")),
                use_sliding_window=bool(window), sliding_window=window or None, max_window_layers=0,
                layer_types=_layer_types(c))


def _qwen3_to_hf(c) -> dict:
    from salt_jax.model import option

    return dict(_qwen2_to_hf(c), attention_bias=bool(option(c, "qkv_bias")))


def _gemma2_to_hf(c) -> dict:
    from salt_jax.model import option

    scalar = (option(c, "attn_scale") or c.head_dim ** -0.5) ** -2
    scalar = int(round(scalar)) if math.isclose(scalar, round(scalar), rel_tol=1e-9) else scalar
    window = option(c, "sliding_window")
    return dict(_hf_sizes(c), **_rope_to_hf(c.rope_base),
                hidden_activation=_act_to_hf(option(c, "activation"), gemma=True), query_pre_attn_scalar=scalar,
                attn_logit_softcapping=option(c, "attn_softcap") or None,
                final_logit_softcapping=option(c, "final_softcap") or None,
                sliding_window=window or None, layer_types=_layer_types(c))


def _gemma3_to_hf(c) -> dict:
    from salt_jax.model import option

    out = _gemma2_to_hf(c)
    out.pop("rope_theta")
    local = option(c, "rope_local_base") or c.rope_base
    out["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": c.rope_base},
                              "sliding_attention": {"rope_type": "default", "rope_theta": local}}
    return out


def _gpt2_to_hf(c) -> dict:
    from salt_jax.model import option

    return {"vocab_size": c.vocab_size, "n_embd": c.d_model, "n_layer": c.n_layers, "n_head": c.n_heads,
            "n_inner": c.mlp_dim, "n_positions": c.max_len, "layer_norm_epsilon": c.norm_eps,
            "activation_function": _act_to_hf(option(c, "activation")), "tie_word_embeddings": bool(c.tie_embeddings)}


# ----------------------------------------------------------------------------- tensor rules

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


def _decoder_rules(c, model_prefix: str = "model.") -> list[Rule]:
    """Rules of the Llama / Qwen / Gemma layout (q/k/v/o_proj, gate/up/down_proj, named norms)."""
    from salt_jax.model import option

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


def _gpt2_rules(c, prefix: str = "transformer.") -> list[Rule]:
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


@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str
    from_hf: Callable[[dict], dict]  # HF config.json -> salt_jax model fields
    to_hf: Callable[[Any], dict]  # salt_jax model config -> HF config.json fields
    rules: Callable[..., list[Rule]]


FAMILIES = {f.model_type: f for f in (
    Family("llama", "LlamaForCausalLM", _llama_from_hf, _llama_to_hf, _decoder_rules),
    Family("qwen2", "Qwen2ForCausalLM", _qwen2_from_hf, _qwen2_to_hf, _decoder_rules),
    Family("qwen3", "Qwen3ForCausalLM", _qwen3_from_hf, _qwen3_to_hf, _decoder_rules),
    Family("gemma2", "Gemma2ForCausalLM", _gemma2_from_hf, _gemma2_to_hf, _decoder_rules),
    Family("gemma3_text", "Gemma3ForCausalLM", _gemma3_from_hf, _gemma3_to_hf, _decoder_rules),
    Family("gpt2", "GPT2LMHeadModel", _gpt2_from_hf, _gpt2_to_hf, _gpt2_rules),
)}


def family_of(hf: dict, where: str = "config.json") -> Family:
    """The family of an HF config, or an error naming model_type."""
    model_type = hf.get("model_type")
    if model_type == "gemma3":
        raise UserError(f"{where}: model_type='gemma3' is the multimodal Gemma 3; use a text-only checkpoint "
                        "(model_type='gemma3_text', Gemma3ForCausalLM)")
    if model_type not in FAMILIES:
        raise UserError(f"{where}: model_type={model_type!r} is not supported; supported: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def _canonical(fields: dict) -> dict:
    """Normalises equivalent spellings of an option set (so configs compare by meaning)."""
    from salt_jax.model import OPTIONS

    out = dict(OPTIONS, **fields)
    if out["positions"] == "learned":  # no rotary: its bases mean nothing
        out["rope_base"], out["rope_local_base"] = 10000.0, 0.0
    if not out["sliding_window"]:
        out["local_layers"] = ""
    if out["local_layers"] and "G" not in out["local_layers"]:
        out["local_layers"] = ""
    if "L" not in (out["local_layers"] or ("L" if out["sliding_window"] else "")):
        out["rope_local_base"], out["sliding_window"] = 0.0, 0
    if out["rope_local_base"] == out["rope_base"]:
        out["rope_local_base"] = 0.0
    if out["attn_scale"] and math.isclose(out["attn_scale"], out["head_dim"] ** -0.5, rel_tol=1e-9):
        out["attn_scale"] = 0.0
    return out


def model_config_from_hf(hf: dict, where: str = "config.json") -> ml_collections.ConfigDict:
    """The salt_jax model config (sizes + architecture options) of an HF config.json."""
    from salt_jax import presets

    family = family_of(hf, where)
    try:
        fields = _canonical(family.from_hf(hf))
    except KeyError as e:
        raise UserError(f"{where}: field {e.args[0]!r} is missing (needed for model_type={family.model_type!r})") \
            from None
    except UserError as e:
        raise UserError(f"{where}: {str(e).removeprefix('config.json: ')}") from None
    c = presets.model_config("test-tiny")
    c.preset = f"hf:{family.model_type}"
    for key, value in fields.items():
        c[key] = type(c[key])(value) if not isinstance(c[key], bool) else bool(value)
    return c


def hf_config_for(cfg: ml_collections.ConfigDict, prefer: str | None = None) -> tuple[Family, dict]:
    """(family, config.json dict) of the first HF family that expresses `cfg` exactly.

    Tries the preferred family (the one a model was imported from), then Llama,
    Qwen2, Qwen3, Gemma 2, Gemma 3 and GPT-2.
    """
    from salt_jax.model import OPTIONS, option

    want = _canonical(dict({k: cfg[k] for k in _SIZE_FIELDS}, **{k: option(cfg, k) for k in OPTIONS}))
    order = ([prefer] if prefer in FAMILIES else []) + [f for f in FAMILIES if f != prefer]
    first_mismatch = None
    for name in order:
        family = FAMILIES[name]
        try:
            hf = family.to_hf(cfg)
            got = _canonical(family.from_hf(dict(hf, model_type=name)))
        except (UserError, KeyError, ValueError, TypeError):
            continue
        diff = [k for k in want if not _equal(want[k], got.get(k))]
        if not diff:
            return family, dict(hf, model_type=name, architectures=[family.architecture])
        first_mismatch = first_mismatch or (name, diff[0])
    name, field = first_mismatch or ("llama", "?")
    raise UserError(f"config.model.{field}={cfg.get(field)!r}: no Hugging Face family here expresses this model "
                    f"(closest: {name}); export supports {', '.join(FAMILIES)}")


def _equal(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return b is not None and math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    return a == b


# ----------------------------------------------------------------------------- import

def _tree_get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _tree_set(tree: dict, path, value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _abstract_params(cfg):
    """The boxed abstract parameters of a model config (salt_jax.state.abstract_params)."""
    from salt_jax.model import Transformer
    from salt_jax.state import abstract_params

    return abstract_params(Transformer(cfg))


def _place(host: np.ndarray, sharding):
    """A host array onto its sharding (each device reads only its slice; works on any host count)."""
    import jax

    if sharding is None:
        return jax.device_put(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def load_params(hf_dir: str, cfg: ml_collections.ConfigDict | None = None, shardings=None) -> tuple[Any, Any]:
    """(model config, params) of an HF directory; params placed into `shardings` (a tree) or device 0.

    Streams: holds at most one stacked parameter (or one fused HF tensor's
    parts) on the host at a time.
    """
    import jax
    from flax import linen as nn

    from salt_jax.model import dtype_of

    hf = read_hf_config(hf_dir)
    cfg = cfg or model_config_from_hf(hf, os.path.join(hf_dir, "config.json"))
    family = family_of(hf)
    boxed = _abstract_params(cfg)
    abstract = nn.meta.unbox(boxed)
    dtype = np.dtype(dtype_of(cfg.param_dtype))
    reader = SafetensorsReader(hf_dir)
    prefix = {}
    if family.model_type == "gpt2":
        prefix = {"prefix": "transformer." if "transformer.wte.weight" in reader.names() else ""}
    params: dict = {}
    try:
        for rule in family.rules(cfg, **prefix):
            hosts = [np.empty(_tree_get(abstract, p).shape, dtype) for p in rule.salt]
            for i in range(cfg.n_layers if rule.layered else 1):
                parts = rule.to_salt(reader.get(rule.hf.format(i=i), rule.hf_shape))
                for host, part in zip(hosts, parts):
                    if rule.layered:
                        host[i] = part
                    else:
                        host[...] = part
            for path, host in zip(rule.salt, hosts):
                _tree_set(params, path, _place(host, None if shardings is None else _tree_get(shardings, path)))
            del hosts
        unused = sorted(n for n in reader.names() - reader.used
                        if not n.endswith(IGNORED_SUFFIXES) and not (cfg.tie_embeddings and n == "lm_head.weight"))
        if unused:
            raise UserError(f"{hf_dir}: tensor {unused[0]!r} (and {len(unused) - 1} more) is not used by the model "
                            "its config.json describes; an unsupported option may be set")
    finally:
        reader.close()
    missing = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract)
               if _try_get(params, p) is None]
    if missing:
        raise RuntimeError(f"hf import: no rule fills {missing[0]}")  # a bug in the rules, not a user error
    return cfg, params


def _try_get(tree, keypath):
    for k in keypath:
        if not isinstance(tree, dict) or k.key not in tree:
            return None
        tree = tree[k.key]
    return tree


def fingerprint(hf_dir: str) -> str:
    """A short hash of an HF directory's config and weight files (names, sizes, headers)."""
    h = hashlib.sha256()
    with open(os.path.join(hf_dir, "config.json"), "rb") as fh:
        h.update(fh.read())
    for path in sorted(glob.glob(os.path.join(hf_dir, "*.safetensors"))):
        h.update(f"{os.path.basename(path)}:{os.path.getsize(path)}\n".encode())
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(min(n, 1 << 24)))
    return "hf-" + h.hexdigest()[:16]


def tokenizer_fingerprint(tok_dir: str | None) -> str:
    if not tok_dir or not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        return ""
    from salt_jax.tokenizer import HFTokenizer

    return HFTokenizer(tok_dir).fingerprint()


def load_teacher(hf_dir: str, salt_cfg, student_model_cfg, tokenizer_fp: str, mesh):
    """A `teacher.Teacher` read straight from an HF directory (config.salt.teacher=DIR)."""
    from salt_jax import teacher as teacher_lib

    hf_dir = os.path.abspath(hf_dir)
    cfg = model_config_from_hf(read_hf_config(hf_dir), os.path.join(hf_dir, "config.json"))
    cfg = teacher_lib.held_config(cfg, salt_cfg)
    tok_fp = tokenizer_fingerprint(hf_dir)
    if cfg.vocab_size != student_model_cfg.vocab_size:
        raise UserError(f"config.salt.teacher={hf_dir}: its vocab_size ({cfg.vocab_size}) differs from "
                        f"config.model.vocab_size ({student_model_cfg.vocab_size}); leave the student's at the "
                        "preset's value (it then takes the teacher's) or set it to the teacher's")
    if tok_fp and tok_fp != tokenizer_fp:
        raise UserError(f"config.salt.teacher={hf_dir}: the run tokenizes with {tokenizer_fp}, not the teacher's "
                        f"tokenizer ({tok_fp}); set config.data.tokenizer.kind=hf and hf_dir={hf_dir}")
    model, shardings = teacher_lib.layout(cfg, salt_cfg, mesh)
    _, params = load_params(hf_dir, cfg, shardings)
    return teacher_lib.Teacher(model=model, config=cfg, params=params, shardings=shardings, checkpoint=hf_dir,
                   fingerprint=fingerprint(hf_dir), tokenizer=tok_fp)


def _copy_tokenizer(src: str, dst: str) -> list[str]:
    """Copies the tokenizer files present in `src` into `dst`; returns their names."""
    names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
    if names:
        os.makedirs(dst, exist_ok=True)
        for n in names:
            shutil.copyfile(os.path.join(src, n), os.path.join(dst, n))
    return names


def import_hf(hf_dir: str, out: str, mesh=None, dtype: str = "float32") -> str:
    """Writes `out`: a salt_jax teacher checkpoint (out/checkpoints/0) of an HF directory, + its tokenizer.

    The checkpoint has the layout and record of a teacher run's, so
    config.salt.teacher=out works unchanged; the tokenizer files go to
    out/hf_tokenizer and the record names them. Returns the checkpoint directory.
    """
    from salt_jax import checkpoints, sharding

    hf_dir = os.path.abspath(hf_dir)
    hf = read_hf_config(hf_dir)
    cfg = model_config_from_hf(hf, os.path.join(hf_dir, "config.json"))
    cfg.dtype = dtype
    if os.path.isdir(os.path.join(out, "checkpoints")):
        raise UserError(f"--out {out}: already holds checkpoints; choose a new directory")
    mesh = mesh or sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1}))
    boxed = _abstract_params(cfg)
    _, params = load_params(hf_dir, cfg, sharding.shardings_for(boxed, mesh))
    tok_files = _copy_tokenizer(hf_dir, os.path.join(out, "hf_tokenizer"))
    tok_dir = os.path.join(out, "hf_tokenizer") if "tokenizer.json" in tok_files else None
    record = {"method": "hf_import", "step": 0, "model": cfg.to_dict(), "tokenizer": tokenizer_fingerprint(tok_dir),
              "hf": {"source": hf_dir, "model_type": hf["model_type"], "fingerprint": fingerprint(hf_dir),
                     "config": hf}, "hf_tokenizer": "hf_tokenizer" if tok_dir else ""}
    ckpt = checkpoints.Checkpointer(os.path.join(out, "checkpoints"), every=1, keep=1)
    ckpt.save(0, {"params": params}, record, force=True)
    ckpt.wait()
    ckpt.close()
    return os.path.join(out, "checkpoints", "0")


# ----------------------------------------------------------------------------- a teacher's HF identity

def teacher_hf_info(teacher: str) -> tuple[str | None, int] | None:
    """(tokenizer directory or None, vocab_size) when config.salt.teacher is HF-derived, else None.

    HF-derived: an HF model directory, or a checkpoint written by `import_hf`
    (its record names the copied tokenizer).
    """
    path = os.path.abspath(os.path.expanduser(teacher))
    if is_hf_dir(path):
        hf = read_hf_config(path)
        cfg = model_config_from_hf(hf, os.path.join(path, "config.json"))
        return (path if os.path.isfile(os.path.join(path, "tokenizer.json")) else None), cfg.vocab_size
    from salt_jax import checkpoints
    from salt_jax.teacher import resolve_checkpoint

    try:
        root, step = resolve_checkpoint(path)
    except UserError:
        return None
    record = checkpoints.read_record(root, step) or {}
    if not record.get("hf") and not record.get("hf_tokenizer"):
        return None
    tok = record.get("hf_tokenizer") or ""
    workdir = os.path.dirname(root) if os.path.basename(root) == "checkpoints" else root
    tok_dir = tok if os.path.isabs(tok) else os.path.join(workdir, tok) if tok else None
    return tok_dir, int(record["model"]["vocab_size"])


def adopt_teacher_vocabulary(config: ml_collections.ConfigDict) -> None:
    """With an HF teacher: tokenize with its tokenizer and give the student its vocabulary size.

    data.tokenizer.kind becomes "hf" with hf_dir the teacher's tokenizer (a
    student must share its teacher's tokenizer); model.vocab_size, when still
    the preset's, becomes the teacher's (the HF config's vocab_size, which may
    exceed the tokenizer's).
    """
    from salt_jax import presets

    if config.salt.method not in ("rkd", "salt", "salt_ds") or not config.salt.teacher:
        return
    info = teacher_hf_info(config.salt.teacher)
    if info is None:
        return
    tok_dir, vocab = info
    t, m = config.data.tokenizer, config.model
    if tok_dir and (t.kind != "hf" or not t.get("hf_dir")):  # any other tokenizer would fail the teacher's check
        logging.info("Hugging Face teacher: tokenizing with its tokenizer (%s) instead of kind=%s", tok_dir, t.kind)
        t.kind, t.hf_dir = "hf", t.get("hf_dir") or tok_dir
    if m.vocab_size != vocab:
        preset_vocab = presets.model_config(m.preset).vocab_size if m.preset in presets.PRESETS else None
        if m.vocab_size != preset_vocab:
            raise UserError(f"config.model.vocab_size={m.vocab_size}: the Hugging Face teacher's vocabulary is "
                            f"{vocab}; set config.model.vocab_size={vocab} (or leave the preset's)")
        logging.info("Hugging Face teacher: config.model.vocab_size %d -> %d (the teacher's)", m.vocab_size, vocab)
        m.vocab_size = vocab


# ----------------------------------------------------------------------------- export

def _restore_params(root: str, step: int, cfg) -> Any:
    """The parameters of checkpoint root/step on one device (no optimizer state)."""
    import jax
    from flax import linen as nn
    from jax.sharding import SingleDeviceSharding

    from salt_jax.checkpoints import restore_params

    dev = SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev),
                          nn.meta.unbox(_abstract_params(cfg)))
    return restore_params(root, step, target)


def _run_tokenizer_dir(workdir: str, record: dict) -> str | None:
    """The HF tokenizer directory a run (or an imported checkpoint) tokenized with, if any."""
    if record.get("hf_tokenizer"):
        return os.path.join(workdir, record["hf_tokenizer"])
    try:
        with open(os.path.join(workdir, "config.json")) as fh:
            tok = json.load(fh)["data"]["tokenizer"]
    except (OSError, ValueError, KeyError):
        return None
    return tok.get("hf_dir") if tok.get("kind") == "hf" else None


def export_hf(workdir: str, out: str, step: int | None = None, dtype: str = "float32",
              shard_bytes: int = 4 << 30) -> str:
    """Writes the run's checkpoint (latest, or `step`) as an HF model directory; returns its family.

    config.json (the family that expresses the model config exactly),
    model.safetensors (sharded with an index above `shard_bytes`) and the
    tokenizer files when the run tokenized with an HF tokenizer.
    """
    import jax
    from safetensors.numpy import save_file

    from salt_jax import checkpoints
    from salt_jax.teacher import resolve_checkpoint

    workdir = os.path.abspath(workdir)
    try:
        root, latest = resolve_checkpoint(workdir)
    except UserError as e:
        raise UserError(f"--workdir {workdir}: {str(e).split(': ', 1)[-1]}") from None
    if step is None:
        step = latest
    elif not os.path.isdir(os.path.join(root, str(step))):
        raise UserError(f"--step {step}: no such checkpoint in {root}; the latest is {latest}")
    record = checkpoints.read_record(root, step) or {}
    if "model" not in record:
        raise UserError(f"{os.path.join(root, str(step))}: no readable record with the model config; "
                        "is it a salt_jax checkpoint?")
    cfg = ml_collections.ConfigDict(record["model"])
    family, hf = hf_config_for(cfg, prefer=(record.get("hf") or {}).get("model_type"))
    params = _restore_params(root, step, cfg)
    out_dtype = {"float32": np.float32, "bfloat16": "bfloat16", "float16": np.float16}[dtype]
    if out_dtype == "bfloat16":
        import ml_dtypes

        out_dtype = ml_dtypes.bfloat16
    os.makedirs(out, exist_ok=True)
    shards, current, size = [], {}, 0
    for rule in family.rules(cfg):
        leaves = [_tree_get(params, p) for p in rule.salt]
        for i in range(cfg.n_layers if rule.layered else 1):
            parts = [np.asarray(jax.device_get(x[i] if rule.layered else x)) for x in leaves]
            tensor = np.ascontiguousarray(rule.to_hf(*parts).astype(out_dtype))
            current[rule.hf.format(i=i)] = tensor
            size += tensor.nbytes
            if size >= shard_bytes:
                shards.append(current)
                _write_shard(save_file, out, current, len(shards))
                current, size = {}, 0
    if current or not shards:
        shards.append(current)
        _write_shard(save_file, out, current, len(shards))
    _finish_shards(out, shards)
    hf_record = (record.get("hf") or {}).get("config") or {}
    tok_dir = _run_tokenizer_dir(os.path.dirname(root) if os.path.basename(root) == "checkpoints" else root, record)
    special = {k: hf_record[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in hf_record}
    if tok_dir and os.path.isdir(tok_dir):
        _copy_tokenizer(tok_dir, out)
        special = dict(_special_ids(tok_dir), **special)
    hf = dict(hf, **special, dtype=dtype, torch_dtype=dtype)
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(hf, fh, indent=2, sort_keys=True)
    return family.model_type


def _write_shard(save_file, out: str, tensors: dict, index: int) -> None:
    save_file(tensors, os.path.join(out, f"model-{index:05d}.safetensors"), metadata={"format": "pt"})


def _finish_shards(out: str, shards: list[dict]) -> None:
    """One shard -> model.safetensors; several -> model-0000i-of-0000n.safetensors + index."""
    n = len(shards)
    if n == 1:
        os.replace(os.path.join(out, "model-00001.safetensors"), os.path.join(out, "model.safetensors"))
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        os.replace(os.path.join(out, f"model-{i:05d}.safetensors"), os.path.join(out, name))
        weight_map.update({k: name for k in shard})
    total = sum(t.nbytes for s in shards for t in s.values())
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)


def _special_ids(tok_dir: str) -> dict:
    from salt_jax.tokenizer import HFTokenizer

    tok = HFTokenizer(tok_dir)
    out = {"eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    if tok.bos_id is not None:
        out["bos_token_id"] = tok.bos_id
    return out


# ----------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> None:
    from salt_jax.cli import fail, setup_logging

    parser = argparse.ArgumentParser(prog="python -m salt_jax.hf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="HF model directory -> salt_jax teacher checkpoint")
    imp.add_argument("--hf-dir", required=True, help="local Hugging Face model directory (config.json + safetensors)")
    imp.add_argument("--out", required=True, help="new directory for the checkpoint (use it as config.salt.teacher)")
    imp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                     help="compute dtype recorded in the model config (parameters stay float32)")
    exp = sub.add_parser("export", help="salt_jax run -> HF model directory")
    exp.add_argument("--workdir", required=True, help="the run's workdir (or a checkpoints directory)")
    exp.add_argument("--out", required=True, help="directory to write config.json + safetensors into")
    exp.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    exp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                     help="dtype of the written tensors")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.command == "import":
            path = import_hf(args.hf_dir, args.out, dtype=args.dtype)
            logging.info("wrote %s; use it with --config.salt.teacher=%s", path, os.path.abspath(args.out))
        else:
            family = export_hf(args.workdir, args.out, args.step, args.dtype)
            logging.info("wrote %s (%s); load it with AutoModelForCausalLM.from_pretrained", args.out, family)
    except UserError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
