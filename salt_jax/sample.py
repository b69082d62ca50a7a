"""Text from a run's checkpoint: KV-cache decoding, greedy or sampled.

    python -m salt_jax.sample --workdir=DIR --prompt="def fibonacci(n):" [--max_tokens=128]
                              [--temperature=0.8] [--top_k=40] [--top_p=0.95] [--seed=0] [--num_samples=1]

Prints the prompt followed by each continuation. --temperature=0 (the default)
is greedy decoding; a sampled run is reproducible for its --seed. --stop
ends a continuation at the first occurrence of that string.
"""

from __future__ import annotations

from absl import app, flags

from salt_jax import distributed
from salt_jax.cli import fail, flags_parser, interrupted, own_flags_help, setup_logging
from salt_jax.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (or a checkpoint directory).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_PROMPT = flags.DEFINE_string("prompt", None, "Text to continue (\\n and \\t are read as a newline and a tab).")
_MAX = flags.DEFINE_integer("max_tokens", 128, "New tokens per continuation at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens; 0 = all.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample within the smallest set of tokens holding this probability.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_NUM = flags.DEFINE_integer("num_samples", 1, "Continuations of the prompt (different ones when sampling).")
_STOP = flags.DEFINE_string("stop", None, "End each continuation at the first occurrence of this string.")


def sample(workdir: str, prompt: str, max_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
           top_p: float = 1.0, seed: int = 0, num_samples: int = 1, step: int | None = None,
           stop: str | None = None) -> list[str]:
    """The continuations of `prompt` (without it) from checkpoint `step` (default: the latest) of `workdir`."""
    import jax

    from salt_jax.eval import load
    from salt_jax.eval.engine import Engine

    if max_tokens < 1:
        raise UserError(f"--max_tokens={max_tokens}: must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise UserError(f"--temperature={temperature} / --top_p={top_p} / --top_k={top_k}: need temperature >= 0, "
                        "0 < top_p <= 1 and top_k >= 0")
    loaded = load.load(workdir, step)
    if max_tokens >= loaded.model_cfg.max_len:
        raise UserError(f"--max_tokens={max_tokens}: the model's context is {loaded.model_cfg.max_len} tokens; "
                        "ask for fewer")
    engine = Engine(loaded.model_cfg, loaded.params, loaded.mesh, batch_size=num_samples)
    tok = loaded.tokenizer
    if jax.process_index() != 0:
        engine.serve()
        return []
    try:
        ids = tok.encode([prompt])[0] or [getattr(tok, "bos_id", None) or tok.eos_id]
        outs = engine.generate([ids] * num_samples, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               seed=seed, eos_id=tok.eos_id,
                               stop=(lambda new: stop in tok.decode(new)) if stop else None)
    finally:
        engine.close()
    texts = [tok.decode(o) for o in outs]
    return [t.split(stop)[0] for t in texts] if stop else texts


def _main(argv) -> None:
    del argv
    setup_logging()
    if not _WORKDIR.value:
        fail("--workdir is required: the run (or checkpoint directory) to sample from")
    if _PROMPT.value is None:
        fail('--prompt is required, e.g. --prompt="def fibonacci(n):"')
    prompt = _PROMPT.value.replace("\\n", "\n").replace("\\t", "\t")
    try:
        distributed.initialize()
        texts = sample(_WORKDIR.value, prompt, _MAX.value, _TEMPERATURE.value, _TOP_K.value, _TOP_P.value,
                       _SEED.value, _NUM.value, _STEP.value, _STOP.value)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        interrupted("Ctrl-C while sampling")
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}", flush=True)
        print(prompt + text, flush=True)


def main() -> None:
    app.run(_main, flags_parser=flags_parser(lambda: __doc__ + "\nflags:\n" + "\n".join(own_flags_help())))


if __name__ == "__main__":
    main()
