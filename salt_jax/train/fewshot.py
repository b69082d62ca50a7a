"""Few-shot scores during training (config.eval): lm-eval tasks on the current parameters, every N steps.

Built only when config.eval.tasks names tasks (lm-eval is imported then, and
the names are checked before the first step). Scores go to metrics.jsonl as
split "fewshot" ("task/metric": value, with "_stderr" beside each) and to
TensorBoard. With several processes, process 0 drives lm-eval and the others
serve its model calls; each call sees the training state's parameters in place
(same shardings, so the scoring programs compile once per run).
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections


class FewShot:
    """`scores(params)` -> {"task/metric": value}: the configured tasks scored on `params`."""

    def __init__(self, config: ml_collections.ConfigDict, mesh, tokenizer):
        from salt_jax.eval import harness
        from salt_jax.eval.engine import Engine

        e = config.eval
        self.cfg, self.harness = e, harness
        self.tasks = [t.strip() for t in e.tasks.split(",") if t.strip()]
        self.manager = harness.task_manager(e.include_path, self.tasks)
        harness.check_tasks(self.tasks, self.manager, "config.eval.tasks")
        self.engine = Engine(config.model, None, mesh, batch_size=e.batch_size)
        self.lm = harness.SaltLM(self.engine, tokenizer, seed=e.seed)

    def due(self, done: int, eval_every: int, total_steps: int) -> bool:
        """Whether step `done` is scored: config.eval.steps (when given) or every config.eval.every
        (default train.eval_every) steps; always the last step (step 0 is scored by the loop)."""
        if done == total_steps:
            return True
        if self.cfg.steps.strip():
            return done in at_steps(self.cfg.steps, total_steps)
        return done % (self.cfg.every or eval_every) == 0


def at_steps(spec: str, total_steps: int) -> list[int]:
    """config.eval.steps as step numbers: "125" is step 125, "25%" the step nearest 25% of the run (as the
    experiment report's fractions), steps past the run dropped."""
    steps = {int(round(int(x.strip()[:-1]) / 100 * total_steps)) if x.strip().endswith("%") else int(x)
             for x in spec.split(",") if x.strip()}
    return sorted(s for s in steps if 0 < s <= total_steps)

    def scores(self, params) -> dict[str, float]:
        self.engine.params = params
        if jax.process_index() != 0:
            self.engine.serve()
            return {}
        quiet = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"  # lm-eval's progress bars would interleave with the training log
        try:
            results = self.harness.evaluate(self.lm, self.tasks, manager=self.manager,
                                            num_fewshot=None if self.cfg.num_fewshot < 0 else self.cfg.num_fewshot,
                                            limit=self.cfg.limit or None, seed=self.cfg.seed)
        finally:
            self.engine.close()
            if quiet is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = quiet
        return self.harness.scores(results)


def describe(scores: dict[str, float]) -> str:
    """One log line's worth: the main metrics, not their standard errors."""
    return " | ".join(f"{k} {v:.4f}" for k, v in scores.items() if not k.endswith("_stderr"))


def maybe(config: ml_collections.ConfigDict, mesh, tokenizer) -> FewShot | None:
    if not config.eval.tasks.strip():
        return None
    steps = at_steps(config.eval.steps, config.train.steps)
    when = (f"at steps {','.join(map(str, steps))}" if config.eval.steps.strip()
            else f"every {config.eval.every or config.train.eval_every} steps")
    logging.info("few-shot evaluation: %s %s", config.eval.tasks, when)
    return FewShot(config, mesh, tokenizer)
