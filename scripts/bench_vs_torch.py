"""salt_jax's training steps against the way most people distil today: Hugging Face transformers in PyTorch.

    python scripts/bench_vs_torch.py [--sizes=demo,50m] [--rounds=3] [--loop_steps=10]

For each size, the same Llama-shaped student and teacher (salt_jax's presets, written as transformers
LlamaConfigs: widths, layers, heads, KV heads, head size, MLP width, vocabulary, tied embeddings, RoPE base,
RMSNorm epsilon), the same batch of random tokens, float32, and the same update: AdamW (betas 0.9 / 0.95,
weight decay 0.1, learning rate 3e-3), gradients clipped to norm 1. The KD step is
`(1 - w) * CE + w * tau^2 * KL(teacher || student)` over full logits with w = 0.5, tau = 1, the teacher frozen
(PyTorch: eval mode under torch.no_grad, as TRL / DistillKit / torchtune-style KD does; salt_jax: its
fused KD step, config.train.loss=dense). Both run in this process on the same threads (PyTorch's intra-op
threads set to the CPU count JAX uses), in rounds that alternate them: per round, of each of
salt_jax baseline, PyTorch baseline, salt_jax KD, PyTorch KD (--loop_steps steps each; the flag is
salt_jax.bench's), each step blocked on its result, after one
untimed round (compilation, warm-up). Prints the medians over all timed steps and the ratios salt_jax /
PyTorch. Needs the [hf] extra (and torch).

    demo  demo-student (1.50M) <- demo-teacher-half (0.82M), vocabulary 2048, batch 16 x 128
    50m   gpu-50m <- gpu-25m, vocabulary 32000, batch 4 x 128
"""

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from salt_jax import bench, cli
from salt_jax.config import base_config

SIZES = {"demo": ("demo-student", "demo-teacher-half", 16, 128), "50m": ("gpu-50m", "gpu-25m", 4, 128)}

_SIZES = flags.DEFINE_list("sizes", ["demo", "50m"], f"Which sizes: {', '.join(SIZES)}.")
_ROUNDS = bench._ROUNDS  # salt_jax.bench's --rounds (absl has one flag of a name): timed rounds here
_STEPS = bench._LOOP_STEPS  # salt_jax.bench's --loop_steps: steps of each of the four per round


def salt_jax_steps(student: str, teacher: str, batch: int, seq: int):
    """(baseline step, KD step): callables running one salt_jax step each, blocked on its metrics."""
    config = base_config(student)
    config.data.batch_size, config.data.seq_len = batch, seq
    config.salt.teacher_preset = teacher
    config, t_cfg = bench.model_configs(config)
    make_programs, online, tokens, state = bench.step_setup(config, t_cfg)
    programs = make_programs(online)
    held = {"state": state}

    def step(kd: bool):
        def run():
            held["state"], m = programs.train(held["state"], tokens, online.params if kd else None)
            jax.block_until_ready(m)
        return run
    return step(False), step(True), config


def torch_steps(config, t_cfg_name: str, batch: int, seq: int):
    """(baseline step, KD step) of the same shapes in PyTorch + transformers."""
    import torch
    import transformers

    def llama(m):
        return transformers.LlamaConfig(
            vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.mlp_dim, num_hidden_layers=m.n_layers,
            num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads, head_dim=m.head_dim,
            max_position_embeddings=max(m.max_len, seq + 1), rms_norm_eps=m.norm_eps, rope_theta=m.rope_base,
            tie_word_embeddings=m.tie_embeddings, attention_bias=False, mlp_bias=False)

    torch.manual_seed(0)
    student = transformers.AutoModelForCausalLM.from_config(llama(config.model), attn_implementation="sdpa")
    teacher = transformers.AutoModelForCausalLM.from_config(llama(base_config(t_cfg_name).model),
                                                            attn_implementation="sdpa").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    o = config.optim
    opt = torch.optim.AdamW(student.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps,
                            weight_decay=o.weight_decay)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(3, config.model.vocab_size, (batch, seq + 1)))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    w, tau = 0.5, 1.0

    def update(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), o.grad_clip)
        opt.step()

    def baseline():
        logits = student(inputs).logits
        update(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)))

    def kd():
        with torch.no_grad():
            t_logits = teacher(inputs).logits
        logits = student(inputs).logits
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        kl = torch.nn.functional.kl_div(torch.log_softmax(logits / tau, -1), torch.log_softmax(t_logits / tau, -1),
                                        log_target=True, reduction="none").sum(-1).mean()
        update((1 - w) * ce + w * tau * tau * kl)

    return baseline, kd


def _times(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv):
    del argv
    cli.keep_jax_off_an_absent_tpu()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for name in _SIZES.value:
        if name not in SIZES:
            cli.fail(f"--sizes: unknown size {name!r}; use {', '.join(SIZES)}")
        student, teacher, batch, seq = SIZES[name]
        jb, jk, config = salt_jax_steps(student, teacher, batch, seq)
        tb, tk = torch_steps(config, teacher, batch, seq)
        fns = {"salt_jax baseline": jb, "torch baseline": tb, "salt_jax KD": jk, "torch KD": tk}
        times = {k: [] for k in fns}
        for r in range(_ROUNDS.value + 1):
            for k, fn in fns.items():
                t = _times(fn, _STEPS.value if r else 2)
                if r:
                    times[k] += t
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((name, student, teacher, batch, seq, config.model.vocab_size, med))
        print(f"{name}: " + " | ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items()), flush=True)
    print(f"device {jax.devices()[0].device_kind}, {os.cpu_count()} threads | float32 | {_ROUNDS.value} rounds x "
          f"{_STEPS.value} steps, alternating | torch {torch.__version__}, jax {jax.__version__}")
    print("| shapes | salt_jax KD step | PyTorch KD step | salt_jax / PyTorch, KD | salt_jax baseline step | "
          "PyTorch baseline step | salt_jax / PyTorch, baseline |")
    print("|---|---|---|---|---|---|---|")
    for name, student, teacher, batch, seq, vocab, m in rows:
        print(f"| {name}: {student} <- {teacher}, vocabulary {vocab}, batch {batch} x {seq} | "
              f"{m['salt_jax KD'] * 1e3:.1f} ms | {m['torch KD'] * 1e3:.1f} ms | "
              f"**{m['salt_jax KD'] / m['torch KD']:.3f}** | {m['salt_jax baseline'] * 1e3:.1f} ms | "
              f"{m['torch baseline'] * 1e3:.1f} ms | **{m['salt_jax baseline'] / m['torch baseline']:.3f}** |")


if __name__ == "__main__":
    jnp.zeros(())  # (jax initialised before torch's threads start)
    app.run(main)
