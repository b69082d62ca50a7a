"""Named model presets: test-tiny, CPU demo, single-GPU sizes and the paper's sizes.

Run configs in configs/ pick one by name (`model_config("demo-student")`) and can
then override any field from the command line (`--config.model.n_layers=6`).
Parameter counts are printed by `python -m salt_jax.model.presets` (docs/models.md's table
is its output) and checked against the closed form in tests.
"""

from __future__ import annotations

import ml_collections

from salt_jax.errors import UserError
from salt_jax.model.flops import param_count

# name -> (vocab_size, d_model, n_layers, n_heads, n_kv_heads, head_dim, mlp_dim, max_len, tie_embeddings)
_SIZES = {
    # Compile in seconds on CPU; used by the tests.
    "test-tiny": (259, 32, 2, 4, 2, 8, 64, 128, False),
    "test-tiny-teacher": (259, 16, 1, 2, 1, 8, 32, 128, True),
    # CPU demo pair on the built-in corpus (SentencePiece vocabulary of 2048). demo-teacher-half is the demo's
    # teacher in the paper's regime (0.55x the student's parameters, 0.47x without embeddings; the paper's
    # 1.5B teacher is 0.54x its 2.8B student); demo-teacher (0.27x) was the first demo's, kept for the contrast.
    "demo-teacher": (2048, 96, 2, 4, 2, 24, 256, 256, True),
    "demo-teacher-half": (2048, 128, 3, 4, 2, 32, 352, 256, True),
    "demo-student": (2048, 160, 4, 4, 2, 40, 448, 256, True),
    # The repro experiment: many short CPU runs (SentencePiece vocabulary of 2048).
    "repro-teacher": (2048, 64, 2, 2, 1, 32, 192, 256, True),
    "repro-student": (2048, 128, 3, 4, 2, 32, 352, 256, True),
    # The ablation's second, smaller teacher (and MiniPLM reference model).
    "repro-teacher-small": (2048, 48, 1, 2, 1, 24, 128, 256, True),
    # One accelerator (32K vocabulary).
    "gpu-25m": (32000, 384, 8, 6, 2, 64, 1024, 1024, True),
    "gpu-50m": (32000, 512, 11, 8, 4, 64, 1408, 1024, True),
    "gpu-100m": (32000, 768, 12, 12, 4, 64, 2048, 1024, True),
    "gpu-350m": (32000, 1024, 24, 16, 8, 64, 2816, 2048, False),
    # The performance benchmarks' students (docs/performance.md): ~125M (teacher gpu-50m) and ~1B (gpu-350m).
    "gpu-125m": (32000, 768, 12, 12, 4, 64, 2048, 2048, False),
    "gpu-1b": (32000, 2048, 18, 16, 8, 128, 5632, 2048, False),
    # The paper's sizes: ~1.5B teacher, ~2.8B and ~8.6B students.
    "paper-1.5b": (32000, 2048, 26, 16, 16, 128, 5632, 2048, False),
    "paper-2.8b": (32000, 2560, 34, 20, 20, 128, 6912, 2048, False),
    "paper-8.6b": (32000, 4096, 38, 32, 8, 128, 14336, 2048, False),
}

PRESETS = tuple(_SIZES)


def model_config(name: str) -> ml_collections.ConfigDict:
    """The model config of a named preset (a fresh, mutable ConfigDict)."""
    if name not in _SIZES:

        raise UserError(f"config.model.preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    v, d, n_layers, h, kv, hd, f, max_len, tie = _SIZES[name]
    c = ml_collections.ConfigDict()
    c.preset = name  # the preset these sizes came from (a label: overriding it changes no size)
    c.vocab_size = v  # token ids are in [0, vocab_size); must cover the tokenizer's vocabulary
    c.d_model = d  # residual stream width
    c.n_layers = n_layers  # number of Transformer blocks (scanned)
    c.n_heads = h  # query heads
    c.n_kv_heads = kv  # key/value heads (grouped-query attention); divides n_heads
    c.head_dim = hd  # width of one attention head
    c.mlp_dim = f  # SwiGLU hidden width
    c.max_len = max_len  # longest sequence the model is configured for (>= data.seq_len)
    c.rope_base = 10000.0  # rotary position embedding base
    c.norm_eps = 1e-6  # norm epsilon (RMSNorm / LayerNorm)
    c.tie_embeddings = tie  # share the input embedding with the output projection
    c.param_dtype = "float32"  # dtype parameters (and optimizer state) are stored in
    c.dtype = "float32"  # compute dtype of activations and matmuls ("bfloat16" for speed)
    c.remat = "none"  # rematerialisation policy per block: none | full | save_dots | save_out_proj
    c.attention = "auto"  # attention kernel: auto (cudnn on GPU, splash on TPU, xla on CPU) | xla | cudnn | splash
    # Architecture options (defaults: the Llama-style model); Hugging Face imports set them (salt_jax.hf.convert).
    c.norm = "rms"  # norm layers: rms (RMSNorm) | layer (LayerNorm with a bias, GPT-2)
    c.norm_plus_one = False  # norms multiply by (1 + scale) instead of scale (Gemma)
    c.qkv_bias = False  # biases on the query / key / value projections (Qwen2, GPT-2)
    c.o_bias = False  # bias on the attention output projection (GPT-2)
    c.mlp_bias = False  # biases on the MLP projections (GPT-2)
    c.mlp = "gated"  # MLP form: gated (act(x W_gate) * x W_up, SwiGLU / GeGLU) | plain (act(x W_up), GPT-2)
    c.activation = "silu"  # MLP activation: silu | gelu_tanh | gelu
    c.qk_norm = False  # RMSNorm over head_dim on queries and keys before rotary (Qwen3, Gemma 3)
    c.post_norms = False  # also norm the attention / MLP outputs before each residual add (Gemma 2 / 3)
    c.embed_scale = 1.0  # multiply input embeddings by this (Gemma: sqrt(d_model))
    c.attn_scale = 0.0  # attention score scale; 0 = head_dim ** -0.5 (Gemma: query_pre_attn_scalar ** -0.5)
    c.attn_softcap = 0.0  # attention logits -> c * tanh(logits / c); 0 = off (Gemma 2)
    c.final_softcap = 0.0  # output logits -> c * tanh(logits / c); 0 = off (Gemma 2)
    c.positions = "rope"  # position encoding: rope | learned (a max_len x d_model table, GPT-2)
    c.sliding_window = 0  # local layers attend only to the last this-many positions; 0 = no local layers
    c.local_layers = ""  # per-layer letters, L = local (sliding window), G = global; "" = all local if sliding_window
    c.rope_local_base = 0.0  # rotary base of local layers; 0 = rope_base (Gemma 3: 10000, global 1e6)
    return c


def print_table() -> None:
    """Prints the preset table (markdown) with counts computed by the code."""
    print("| preset | vocab | d_model | layers | heads (kv) | head_dim | mlp_dim | tied | parameters |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in PRESETS:
        c = model_config(name)
        n = param_count(c)
        size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
        print(f"| {name} | {c.vocab_size} | {c.d_model} | {c.n_layers} | {c.n_heads} ({c.n_kv_heads}) | "
              f"{c.head_dim} | {c.mlp_dim} | {'yes' if c.tie_embeddings else 'no'} | {size} ({n:,}) |")


def main() -> None:
    """salt-presets / python -m salt_jax.model.presets: the preset table; no flags."""
    from absl import app  # noqa: PLC0415 -- only the command line needs absl

    from salt_jax.cli import flags_parser  # noqa: PLC0415

    def help_text() -> str:
        return ("The model presets (config.model.preset; base_config(\"<preset>\") in configs/*.py) as a markdown "
                "table:\nsizes and parameter counts computed by the code (docs/models.md's table is this output).\n\n"
                "flags: none")

    app.run(lambda argv: print_table(), flags_parser=flags_parser(help_text, "salt-presets", ""))


if __name__ == "__main__":
    main()
