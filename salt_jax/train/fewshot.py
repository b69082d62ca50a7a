"""Few-shot scores during training (config.eval): lm-eval tasks on the current parameters, every N steps.

Built only when config.eval.tasks names tasks (lm-eval is imported then, and
the names are checked before the first step). Scores go to metrics.jsonl as
split "fewshot" ("task/metric": value, with "_stderr" beside each) and to
TensorBoard. With several processes, process 0 drives lm-eval and the others
serve its model calls; each call sees the training state's parameters in place
(same shardings, so the scoring programs compile once per run).
"""

from __future__ import annotations

import functools
import logging

import jax
import ml_collections


class FewShot:
    """`scores(params)` -> {"task/metric": value}: the configured tasks scored on `params`."""

    def __init__(self, config: ml_collections.ConfigDict, mesh, tokenizer, log: str | None = None):
        from salt_jax.eval import harness
        from salt_jax.eval.engine import Engine

        e = config.eval
        self.cfg, self.harness, self.log = e, harness, log  # log: lm-eval's own lines go there, not the console
        self.tasks = _names(config)
        self.manager = check_tasks(config)
        self.engine = Engine(config.model, None, mesh, batch_size=e.batch_size)
        self.lm = harness.SaltLM(self.engine, tokenizer, seed=e.seed)

    def due(self, done: int, heldout_every: int, total_steps: int) -> bool:
        """Whether step `done` is scored: config.eval.steps (when given) or every config.eval.every
        (default train.heldout_every) steps; always the last step (step 0 is scored by the loop)."""
        if done == total_steps:
            return True
        if self.cfg.steps.strip():
            return done in at_steps(self.cfg.steps, total_steps)
        return done % (self.cfg.every or heldout_every) == 0

    def scores(self, params) -> dict[str, float]:
        self.engine.params = params
        if jax.process_index() != 0:
            self.engine.serve()
            return {}
        try:  # (lm-eval's progress bars and info lines go to self.log, not between the training log's lines)
            results = self.harness.evaluate(self.lm, self.tasks, manager=self.manager, log=self.log,
                                            num_fewshot=None if self.cfg.num_fewshot < 0 else self.cfg.num_fewshot,
                                            limit=self.cfg.limit or None, seed=self.cfg.seed)
        finally:
            self.engine.close()
        return self.harness.scores(results)


def at_steps(spec: str, total_steps: int) -> list[int]:
    """config.eval.steps as step numbers: "125" is step 125, "25%" the step nearest 25% of the run (as the
    experiment report's fractions), steps past the run dropped."""
    steps = {int(round(int(x.strip()[:-1]) / 100 * total_steps)) if x.strip().endswith("%") else int(x)
             for x in spec.split(",") if x.strip()}
    return sorted(s for s in steps if 0 < s <= total_steps)


def describe(scores: dict[str, float]) -> str:
    """One log line's worth: the main metrics, not their standard errors."""
    return " | ".join(f"{k} {v:.4f}" for k, v in scores.items() if not k.endswith("_stderr"))


def _names(config: ml_collections.ConfigDict) -> list[str]:
    return [t.strip() for t in config.eval.tasks.split(",") if t.strip()]


@functools.lru_cache(maxsize=4)
def _checked_manager(include_path: str, tasks: tuple[str, ...]):
    from salt_jax.eval import harness

    manager = harness.task_manager(include_path, list(tasks), "config.eval.include_path")
    harness.check_tasks(list(tasks), manager, "config.eval.tasks")
    return manager


def check_tasks(config: ml_collections.ConfigDict):
    """lm-eval's task manager for config.eval.tasks, or a UserError naming an unknown name; built once per
    (include_path, tasks), so the check before the store is built and the FewShot after it share it (lm-eval
    is imported only when tasks are named; None when none are)."""
    tasks = _names(config)
    return _checked_manager(config.eval.include_path, tuple(tasks)) if tasks else None


def maybe(config: ml_collections.ConfigDict, mesh, tokenizer, log: str | None = None) -> FewShot | None:
    """The run's FewShot when config.eval.tasks names tasks; lm-eval's own log lines go to the file `log`."""
    if not config.eval.tasks.strip():
        return None
    steps = at_steps(config.eval.steps, config.train.steps)
    when = (f"at steps {','.join(map(str, steps))}" if config.eval.steps.strip()
            else f"every {config.eval.every or config.train.heldout_every} steps")
    logging.info("few-shot evaluation: %s %s", config.eval.tasks, when)
    return FewShot(config, mesh, tokenizer, log)
