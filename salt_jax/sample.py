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
from salt_jax.cli import fail, flags_parser, interrupted, keep_jax_off_an_absent_tpu, own_flags_help, setup_logging
from salt_jax.errors import UserError
from salt_jax.eval import runs

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


def _main(argv) -> None:
    del argv
    keep_jax_off_an_absent_tpu()
    setup_logging()
    if not _WORKDIR.value:
        fail("--workdir is required: the run (or checkpoint directory) to sample from")
    if _PROMPT.value is None:
        fail('--prompt is required, e.g. --prompt="def fibonacci(n):"')
    prompt = _PROMPT.value.replace("\\n", "\n").replace("\\t", "\t")
    try:
        distributed.initialize()
        texts = runs.sample(_WORKDIR.value, prompt, _MAX.value, _TEMPERATURE.value, _TOP_K.value, _TOP_P.value,
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
    app.run(_main, flags_parser=flags_parser(lambda: __doc__ + "\nflags:\n" + "\n".join(own_flags_help()),
                                             "salt-sample"))


if __name__ == "__main__":
    main()
