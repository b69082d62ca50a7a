"""Few-shot evaluation of a run's checkpoint with lm-evaluation-harness.

    python -m salt_jax.eval --workdir=DIR [--step=N] --tasks=stdlib_next_line,hellaswag [--num_fewshot=K]
                            [--limit=N] [--include_path=DIR] [--batch_size=32]

Writes lm-eval's results (its own JSON format) to DIR/eval_results.json
(DIR/eval_results-step<N>.json with --step) and prints lm-eval's table. The
offline tasks in salt_jax/eval/tasks need no network; lm-eval's own tasks
(LAMBADA, HellaSwag, ...) download their data on first use. With several
processes (--coordinator_address ...), process 0 drives lm-eval and all run the
model. icl_probe (salt_jax/eval/icl_probe.py) is scored on the run's own held-out
data; its numbers join the results file under "results", its table is printed.
"""

from __future__ import annotations

from absl import app, flags

from salt_jax import distributed
from salt_jax.cli import fail, flags_parser, interrupted, keep_jax_off_an_absent_tpu, own_flags_help, setup_logging
from salt_jax.errors import UserError
from salt_jax.eval import runs

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (or a checkpoint directory) to evaluate.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
_TASKS = flags.DEFINE_string("tasks", None, "Comma-separated lm-eval task or group names (suites: paper_suite, "
                             "stdlib_offline), or icl_probe (the in-context-learning probe on the run's held-out "
                             "data: icl_probe/induction, icl_probe/slope).")
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "Few-shot examples per prompt (default: each task's own).")
_LIMIT = flags.DEFINE_float("limit", None, "Documents per task: a count, or a fraction if below 1 (default: all; "
                            "icl_probe: windows, a count, default 64).")
_INCLUDE = flags.DEFINE_string("include_path", None, "A directory of extra lm-eval task YAML files.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sequences per forward pass (rounded up to the mesh's rows).")
_SEED = flags.DEFINE_integer("seed", 1234, "Seed of lm-eval's few-shot sampling and of sampled generation.")
_OUT = flags.DEFINE_string("out", None, "Results file (default: eval_results.json in the workdir).")


def _main(argv) -> None:
    del argv
    keep_jax_off_an_absent_tpu()
    setup_logging()
    if not _WORKDIR.value:
        fail("--workdir is required: the run (or checkpoint directory) to evaluate")
    tasks = [t.strip() for t in (_TASKS.value or "").split(",") if t.strip()]
    if not tasks:
        fail("--tasks is required, e.g. --tasks=stdlib_next_line,stdlib_identifier (salt_jax/eval/tasks)")
    limit = _LIMIT.value
    if limit is not None and limit >= 1:
        limit = int(limit)
    try:
        distributed.initialize()
        runs.evaluate_run(_WORKDIR.value, tasks, _STEP.value, _NUM_FEWSHOT.value, limit, _INCLUDE.value,
                      _BATCH.value, _SEED.value, _OUT.value)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        interrupted("Ctrl-C during evaluation; nothing was written")


def main() -> None:
    app.run(_main, flags_parser=flags_parser(lambda: __doc__ + "\nflags:\n" + "\n".join(own_flags_help()),
                                             "salt-eval"))


if __name__ == "__main__":
    main()
