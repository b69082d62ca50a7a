"""Few-shot scores during training (config.eval): lm-eval tasks on the current parameters, every N steps.

Built only when config.eval.tasks names tasks (lm-eval is imported then, unless
icl_probe, salt_jax.eval.icl_probe, is the only one; the names are checked
before the first step). icl_probe is scored here beside lm-eval's tasks, on
windows of the run's held-out split built once. Scores go to metrics.jsonl as
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

    def __init__(self, config: ml_collections.ConfigDict, mesh, tokenizer, log: str | None = None,
                 store=None):
        from salt_jax.eval import icl_probe
        from salt_jax.eval.engine import Engine

        e = config.eval
        self.cfg, self.log = e, log  # log: lm-eval's own lines go there, not the console
        probe, self.tasks = icl_probe.split_names(_names(config))
        self.manager = check_tasks(config)
        self.engine = Engine(config.model, None, mesh, batch_size=e.batch_size)
        self.probe, self.pad_id = None, tokenizer.pad_id
        if probe:  # (windows of the run's held-out split, the same at every step)
            self.probe = icl_probe.windows(icl_probe.heldout_split(store), e.seed, int(e.limit) or icl_probe.WINDOWS)
        if self.tasks:
            from salt_jax.eval import harness

            self.harness = harness
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
        out = {}
        try:  # (lm-eval's progress bars and info lines go to self.log, not between the training log's lines)
            if self.probe is not None:
                from salt_jax.eval import icl_probe

                out.update(icl_probe.scores(self.engine.token_logprobs, self.probe, self.pad_id,
                                            self.engine.batch_size))
            if self.tasks:
                results = self.harness.evaluate(
                    self.lm, self.tasks, manager=self.manager, log=self.log,
                    num_fewshot=None if self.cfg.num_fewshot < 0 else self.cfg.num_fewshot,
                    limit=self.cfg.limit or None, seed=self.cfg.seed)
                out.update(self.harness.scores(results))
        finally:
            self.engine.close()
        return out


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
    is imported only when lm-eval tasks are named; None when none are). icl_probe is checked against
    config.data.seq_len."""
    from salt_jax.eval import icl_probe

    probe, tasks = icl_probe.split_names(_names(config))
    if probe:
        icl_probe.check(config.data.seq_len, "config.eval.tasks")
    return _checked_manager(config.eval.include_path, tuple(tasks)) if tasks else None


def maybe(config: ml_collections.ConfigDict, mesh, tokenizer, log: str | None = None,
          store=None) -> FewShot | None:
    """The run's FewShot when config.eval.tasks names tasks; lm-eval's own log lines go to the file `log`;
    `store`: the run's token store, whose held-out split icl_probe reads."""
    if not config.eval.tasks.strip():
        return None
    steps = at_steps(config.eval.steps, config.train.steps)
    when = (f"at steps {','.join(map(str, steps))}" if config.eval.steps.strip()
            else f"every {config.eval.every or config.train.heldout_every} steps")
    logging.info("few-shot evaluation: %s %s", config.eval.tasks, when)
    return FewShot(config, mesh, tokenizer, log, store)
