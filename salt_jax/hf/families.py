"""Model families: Hugging Face config.json <-> the salt_jax model config, per family.

Each `Family` is two config mappings (HF fields <-> our sizes and
architecture options) and its tensor rules (salt_jax.hf.tensors).
`model_config_from_hf` reads a config.json; `hf_config_for` finds the first
family that expresses a salt_jax model exactly (for export). Imports
salt_jax.model only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import ml_collections

from salt_jax.errors import UserError
from salt_jax.hf.tensors import Rule, decoder_rules, gpt2_rules
from salt_jax.model import presets
from salt_jax.model.transformer import OPTIONS, option

ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "gelu": "gelu"}
_SIZE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim", "max_len",
                "rope_base", "norm_eps", "tie_embeddings")


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
    pattern = option(c, "local_layers") or ("L" if option(c, "sliding_window") else "G") * c.n_layers
    return ["sliding_attention" if ch == "L" else "full_attention" for ch in pattern]


def _llama_to_hf(c) -> dict:
    return dict(_hf_sizes(c), **_rope_to_hf(c.rope_base), attention_bias=bool(option(c, "qkv_bias")),
                mlp_bias=bool(option(c, "mlp_bias")), hidden_act=_act_to_hf(option(c, "activation")))


def _qwen2_to_hf(c) -> dict:
    window = option(c, "sliding_window")
    return dict(_hf_sizes(c), **_rope_to_hf(c.rope_base), hidden_act=_act_to_hf(option(c, "activation")),
                use_sliding_window=bool(window), sliding_window=window or None, max_window_layers=0,
                layer_types=_layer_types(c))


def _qwen3_to_hf(c) -> dict:
    return dict(_qwen2_to_hf(c), attention_bias=bool(option(c, "qkv_bias")))


def _gemma2_to_hf(c) -> dict:
    scalar = (option(c, "attn_scale") or c.head_dim ** -0.5) ** -2
    scalar = int(round(scalar)) if math.isclose(scalar, round(scalar), rel_tol=1e-9) else scalar
    window = option(c, "sliding_window")
    return dict(_hf_sizes(c), **_rope_to_hf(c.rope_base),
                hidden_activation=_act_to_hf(option(c, "activation"), gemma=True), query_pre_attn_scalar=scalar,
                attn_logit_softcapping=option(c, "attn_softcap") or None,
                final_logit_softcapping=option(c, "final_softcap") or None,
                sliding_window=window or None, layer_types=_layer_types(c))


def _gemma3_to_hf(c) -> dict:
    out = _gemma2_to_hf(c)
    out.pop("rope_theta")
    local = option(c, "rope_local_base") or c.rope_base
    out["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": c.rope_base},
                              "sliding_attention": {"rope_type": "default", "rope_theta": local}}
    return out


def _gpt2_to_hf(c) -> dict:
    return {"vocab_size": c.vocab_size, "n_embd": c.d_model, "n_layer": c.n_layers, "n_head": c.n_heads,
            "n_inner": c.mlp_dim, "n_positions": c.max_len, "layer_norm_epsilon": c.norm_eps,
            "activation_function": _act_to_hf(option(c, "activation")), "tie_word_embeddings": bool(c.tie_embeddings)}


@dataclasses.dataclass(frozen=True)
class Family:
    """One Hugging Face model family: its config mappings both ways and its tensor rules.

    `from_hf(config.json dict)` gives salt_jax model fields, `to_hf(model config)`
    the config.json fields; `hf_config_for` accepts a family for export only if
    the round trip gives back the same model. `rules(cfg, ...)` lists the tensor
    rules (salt_jax.hf.tensors) for a model of that config.
    """

    model_type: str  # config.json's model_type
    architecture: str  # config.json's architectures[0] on export
    from_hf: Callable[[dict], dict]  # HF config.json -> salt_jax model fields
    to_hf: Callable[[Any], dict]  # salt_jax model config -> HF config.json fields
    rules: Callable[..., list[Rule]]


FAMILIES = {f.model_type: f for f in (
    Family("llama", "LlamaForCausalLM", _llama_from_hf, _llama_to_hf, decoder_rules),
    Family("qwen2", "Qwen2ForCausalLM", _qwen2_from_hf, _qwen2_to_hf, decoder_rules),
    Family("qwen3", "Qwen3ForCausalLM", _qwen3_from_hf, _qwen3_to_hf, decoder_rules),
    Family("gemma2", "Gemma2ForCausalLM", _gemma2_from_hf, _gemma2_to_hf, decoder_rules),
    Family("gemma3_text", "Gemma3ForCausalLM", _gemma3_from_hf, _gemma3_to_hf, decoder_rules),
    Family("gpt2", "GPT2LMHeadModel", _gpt2_from_hf, _gpt2_to_hf, gpt2_rules),
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
