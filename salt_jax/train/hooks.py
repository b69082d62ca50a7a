"""The work the loop does after a training step, as named hooks over one explicit context.

`table(run)` is the one ordered list of hooks and how often each runs: after
every N-th step, and after the last step. In order: the kill drill, the
adaptive switch, the non-finite check's bookkeeping, a metrics line, the
held-out loss, the few-shot scores (when config.eval.tasks is set; the hook
decides which steps are due), a checkpoint, and the preemption check. Each
hook is a function `hook(ctx, done, step_metrics)`; what hooks share (the run,
the clock, the last evaluations, where a preemption stopped the run) is the
`Context`, never a closure. To add periodic work, write a hook and put it in
`table`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax

from salt_jax.train import faults
from salt_jax.train import fewshot as fewshot_lib
from salt_jax.train.meter import StepMeter, fmt_time
from salt_jax.train.metrics import train_line
from salt_jax.train.setup import Run

Hook = Callable[["Context", int, Any], None]  # (context, steps done, the last step's metrics)


@dataclasses.dataclass
class Context:
    """What the hooks of one run share. `stopped_at` is set by the preemption check; the loop then stops."""

    run: Run
    meter: StepMeter  # the training clock (evaluation and compiling steps are kept off it)
    kill: faults.KillHooks  # config.train.debug_kill
    nonfinite: faults.NonFiniteCheck  # config.train.nan_policy, enforced before every checkpoint
    preemption: faults.Preemption | None = None  # set by the loop while it trains
    heldout: dict = dataclasses.field(default_factory=dict)  # the last held-out evaluation
    fewshot: dict = dataclasses.field(default_factory=dict)  # the last few-shot scores
    stopped_at: int | None = None  # the step a preemption or Ctrl-C stopped the run at

    @classmethod
    def of(cls, run: Run) -> "Context":
        t = run.config.train
        return cls(run, StepMeter(float(run.previous.get("train_seconds", 0.0))), faults.KillHooks(t.debug_kill),
                   faults.NonFiniteCheck(t.nan_policy, t.max_skipped_steps, run.ckpt))

    def save(self, done: int) -> None:
        """Checkpoints step `done` (never a poisoned state: the non-finite check runs first)."""
        r = self.run
        self.nonfinite.check(done)
        r.ckpt.save(done, r.state, dict(r.record, step=done, kd_phase_end=r.phase.end,
                                        train_seconds=self.meter.clock.total), force=True)
        self.kill.maybe_kill("save", done)


def kill_drill(ctx: Context, done: int, _) -> None:
    """config.train.debug_kill=step:N: SIGKILL after step N, once the earlier checkpoints are on disk."""
    if ctx.kill.wants("step", done):
        jax.block_until_ready(ctx.run.state.step)
        ctx.run.ckpt.wait()
        ctx.kill.maybe_kill("step", done)


def adaptive_switch(ctx: Context, done: int, _) -> None:
    """salt.switch=adaptive: reads whether the step ended the KD phase (the phase then ends at that step)."""
    r = ctx.run
    if r.teacher is not None:
        message = r.phase.observe(r.state.kd)  # (kd/schedules.py owns the switch; this only reports it)
        if message:
            logging.info("%s", message)


def watch_nonfinite(ctx: Context, _done: int, step_metrics) -> None:
    """Keeps the step's loss and gradient norm for the non-finite check before the next checkpoint."""
    ctx.nonfinite.add(step_metrics)


def log_line(ctx: Context, done: int, _) -> None:
    """The interval's train line in metrics.jsonl, and (config.train.progress) a line of progress."""
    r, meter = ctx.run, ctx.meter
    records, seconds, timed = meter.interval_done()
    line = train_line(records, seconds, r.config.data.batch_size * r.config.data.seq_len, timed, r.flops)
    r.writer.write("train", done, dict(line, train_seconds=meter.clock.total))
    if r.config.train.progress and jax.process_index() == 0:
        rate = meter.steps_per_sec()
        logging.info("step %d/%d | loss %.4f | %.0f tok/s | %.2f steps/s | ETA %s", done, r.total_steps,
                     line["loss"], line["tokens_per_sec"] or 0.0, line["steps_per_sec"] or 0.0,
                     fmt_time((r.total_steps - done) / rate) if rate > 0 else "?")


def heldout_loss(ctx: Context, done: int, _=None) -> None:
    """The held-out loss and accuracy (per corpus for a mixture), off the training clock."""
    r = ctx.run
    if done:  # (the evaluation before step 1 comes before the clock starts)
        ctx.meter.lap(r.state.step)
    ctx.heldout.update(r.heldout_loss())
    r.writer.write("eval", done, dict(ctx.heldout, train_seconds=ctx.meter.clock.total))
    if done:
        per_corpus = "".join(f" | {k[5:]} {v:.4f}" for k, v in ctx.heldout.items() if k.startswith("loss/"))
        logging.info("eval at step %d | held-out loss %.4f | accuracy %.4f%s", done, ctx.heldout["loss"],
                     ctx.heldout["accuracy"], per_corpus)
    ctx.meter.clock.skip()


def fewshot_scores(ctx: Context, done: int, _=None) -> None:
    """Few-shot scores (config.eval.*) at the steps they are due, off the training clock."""
    r = ctx.run
    if done and not r.fewshot.due(done, r.config.train.heldout_every, r.total_steps):
        return
    if done:
        ctx.meter.lap(r.state.step)
    scores = r.fewshot.scores(r.state.params)
    ctx.fewshot.update(scores)
    r.writer.write("fewshot", done, dict(scores, train_seconds=ctx.meter.clock.total))
    if scores:
        logging.info("few-shot at step %d | %s", done, fewshot_lib.describe(scores))
    ctx.meter.clock.skip()


def checkpoint(ctx: Context, done: int, _) -> None:
    ctx.save(done)
    ctx.meter.lap()  # (the non-finite check blocked on every step so far)


def preemption_check(ctx: Context, done: int, _) -> None:
    """SIGTERM or Ctrl-C: checkpoint the step reached (every process agrees on it) and stop the loop."""
    r, t = ctx.run, ctx.run.config.train
    if done < r.total_steps and ctx.preemption.should_stop(sync=done % t.log_every == 0):
        ctx.meter.lap(r.state.step)
        if done % t.checkpoint_every:  # (a step on the interval is saved already)
            ctx.save(done)
        r.ckpt.wait()
        ctx.preemption.finished()
        ctx.stopped_at = done


def table(run: Run) -> list[tuple[Hook, int]]:
    """The hooks after each step, in the order they run, each with its interval in steps."""
    t = run.config.train
    return [(kill_drill, 1), (adaptive_switch, 1), (watch_nonfinite, 1), (log_line, t.log_every),
            (heldout_loss, t.heldout_every), *([(fewshot_scores, 1)] if run.fewshot is not None else []),
            (checkpoint, t.checkpoint_every), (preemption_check, 1)]


def before_training(ctx: Context) -> None:
    """A fresh run's evaluations at step 0 (the curves start at the initial parameters)."""
    heldout_loss(ctx, 0)
    if ctx.run.fewshot is not None:
        fewshot_scores(ctx, 0)


def run_after_step(hooks: list[tuple[Hook, int]], ctx: Context, done: int, step_metrics) -> None:
    """Runs each hook due after step `done`: every `every`-th step, and the last one."""
    for hook, every in hooks:
        if done % every == 0 or done == ctx.run.total_steps:
            hook(ctx, done, step_metrics)
