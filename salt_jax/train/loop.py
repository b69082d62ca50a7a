"""One training run, top to bottom: setup, then the loop of steps, each followed by the hooks due.

Each step trains on the batch of step s (salt_jax.data.batches) with the fused
teacher+student step while the KD phase lasts and the teacher-free step after
it. After each step the hooks due run (salt_jax.train.hooks.table: kill
drill, adaptive switch, non-finite bookkeeping, metrics line, held-out loss,
few-shot scores, checkpoint, preemption check). Re-running on the same
workdir resumes from the latest checkpoint and, because batches are
step-indexed, ends with the same parameters as an uninterrupted run. A run
stopped by a preemption notice or Ctrl-C raises faults.Preempted /
faults.Interrupted after its checkpoint is written: that is the one way a stop
is reported.
"""

from __future__ import annotations

import logging

import jax
import ml_collections

from salt_jax import paths
from salt_jax.errors import UserError
from salt_jax.train import faults, hooks
from salt_jax.train.setup import Run, setup
from salt_jax.train.workdir import Workdir


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) the run in `workdir`, holding its lock; returns the final summary.

    Raises faults.Preempted (SIGTERM) or faults.Interrupted (Ctrl-C) once the step reached is checkpointed. A run
    refused by setup (a UserError before its first step) leaves no files behind (Workdir.discard)."""
    with Workdir(workdir) as w:
        try:
            r = setup(config, w.path)
        except UserError:
            w.discard()
            raise
        return _run(r.config, r)  # (the resolved config: salt_jax.config.resolved)


def _run(config: ml_collections.ConfigDict, r: Run) -> dict:
    logging.info("corpus: %s", describe_corpus(r.corpus))
    ctx, after_step = hooks.Context.of(r), hooks.table(r)
    if r.start == 0:
        hooks.before_training(ctx)
    r.start_prefetch()
    try:
        with faults.Preemption(config.train.preemption_grace_s) as ctx.preemption:
            train_steps(ctx, after_step, r.start, r.total_steps)
    finally:
        r.stop_prefetch()
        if r.teacher is not None:  # (rkd, or a stop inside the KD phase: a cached teacher's read-ahead ends)
            r.teacher.release()
    r.ckpt.wait()
    r.ckpt.close()
    r.writer.close()
    if ctx.stopped_at is not None:
        raise _stopped(ctx.preemption.signal, ctx.stopped_at)
    return _summary(r, ctx.heldout, ctx.meter.clock.total, ctx.fewshot)


def train_steps(ctx: hooks.Context, after_step: list, start: int, stop: int) -> None:
    """Steps `start` .. `stop` - 1, each followed by the hooks due (`hooks.table`), until a stop is asked for: the
    loop's step path (salt_jax.bench --loop drives it too). Steps are dispatched, not waited for: the hooks block
    only where they read the device (a metrics line every config.train.log_every steps, a checkpoint, ...)."""
    for step in range(start, stop):
        step_metrics = _train_step(ctx, step)
        hooks.run_after_step(after_step, ctx, step + 1, step_metrics)
        if ctx.stopped_at is not None:
            break


def _train_step(ctx: hooks.Context, step: int):
    """Trains step `step` (releasing the teacher first where the KD phase has ended); returns its metrics."""
    r = ctx.run
    if r.teacher is not None and not r.phase.active(step):
        r.end_kd_phase(step)
        ctx.meter.compiles()
    ctx.meter.before_step()
    r.state, step_metrics = r.programs.train(r.state, r.batch(step), r.teacher_input(step))
    ctx.meter.after_step(step + 1, step_metrics)
    return step_metrics


def _stopped(signal: str | None, step: int) -> faults.Preempted:
    """The exception that reports a run stopped at `step` with its checkpoint written."""
    stop = faults.Interrupted if signal == "SIGINT" else faults.Preempted
    what = "interrupted" if stop is faults.Interrupted else "preempted"
    return stop(f"{what}: checkpoint at step {step} written; re-run the same command to resume")


def describe_corpus(c: dict) -> str:
    """One line: what a run's data was, for the log and the report (a mixture: each corpus, with its weight)."""
    if "mixture" in c:
        return "mixture of " + "; ".join(f"{m['name']} (weight {m['weight']:.3g}): {describe_corpus(m)}"
                                         for m in c["mixture"])
    python = f", Python {c['python']}'s standard library" if "python" in c else ""
    return (f"{c['source']} source {c['source_fingerprint']}{python}: {c['train_files']:,} train files, "
            f"{c['train_tokens']:,} train / {c['heldout_tokens']:,} held-out tokens ({c['tokenizer']}, "
            f"store {c['store']})")


def _summary(r: Run, last_eval: dict, train_seconds: float, fewshot: dict) -> dict:
    """The finished run's summary, written to summary.json."""
    method = r.config.salt.method
    if not last_eval:  # resumed after the run had already finished
        last_eval = r.heldout_loss()
    resumed_finished = r.start >= r.total_steps
    summary = {"steps": r.total_steps, "final_eval_loss": last_eval["loss"],
               "final_eval_accuracy": last_eval["accuracy"], "parameters": r.n_params, "method": method,
               "kd_phase_end": r.phase.end, "corpus": r.corpus,
               **({"final_eval_loss_per_corpus": {k[len("loss/"):]: v for k, v in last_eval.items()
                                                  if k.startswith("loss/")}} if r.mixture else {}),
               "train_seconds": float(r.previous.get("train_seconds", 0.0)) if resumed_finished else train_seconds}
    old = paths.join(r.workdir, "summary.json")
    if not fewshot and resumed_finished and paths.exists(old):  # (scored when the run finished)
        fewshot = paths.read_json(old).get("fewshot") or {}
    if fewshot:
        summary["fewshot"] = dict(fewshot)
    if jax.process_index() == 0:
        paths.write_json(paths.join(r.workdir, "summary.json"), summary)
    return summary
