"""One training run, top to bottom: setup, then the loop of steps and the periodic work as hooks.

Each step trains on the batch of step s (salt_jax.data.batches) with the fused
teacher+student step while the KD phase lasts and the teacher-free step after
it. After each step the hooks run, in this order: the kill drill, the
adaptive switch, the non-finite check's bookkeeping, a metrics line every
log_every steps, a held-out evaluation every heldout_every steps, few-shot
scores every config.eval.every steps (when config.eval.tasks is set), a checkpoint
every checkpoint_every steps, and the preemption check. Re-running on the same
workdir resumes from the latest checkpoint and, because batches are
step-indexed, ends with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import logging

import jax
import ml_collections

from salt_jax import paths
from salt_jax.train import faults
from salt_jax.train import fewshot as fewshot_lib
from salt_jax.train.hooks import Hooks, NonFiniteCheck, StepMeter, fmt_time
from salt_jax.train.metrics import train_line
from salt_jax.train.setup import Run, setup
from salt_jax.train.workdir import Workdir


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) the run in `workdir`, holding its lock; returns the final summary."""
    with Workdir(workdir) as w:
        return _run(config, w.path)


def _run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    r = setup(config, workdir)
    logging.info("corpus: %s", describe_corpus(r.corpus))
    cfg_t = config.train
    meter = StepMeter(float(r.previous.get("train_seconds", 0.0)))
    nan_check = NonFiniteCheck(cfg_t.nan_policy, cfg_t.max_skipped_steps, r.ckpt)
    kill = faults.KillHooks(cfg_t.debug_kill)
    last_eval, last_fewshot = {}, {}
    preempted = None

    def save(done: int) -> None:
        nan_check.check(done)  # never checkpoint a poisoned state
        r.ckpt.save(done, r.state, dict(r.record, step=done, kd_phase_end=r.phase.end,
                                        train_seconds=meter.clock.total), force=True)
        kill.maybe_kill("save", done)

    def kill_drill(done: int, _) -> None:
        if kill.wants("step", done):
            jax.block_until_ready(r.state.step)
            r.ckpt.wait()  # the drill names where the resume starts: earlier checkpoints are on disk
            kill.maybe_kill("step", done)

    def adaptive_switch(done: int, _) -> None:
        if r.teacher is not None and r.phase.adaptive:
            switch_step = int(jax.device_get(r.state.kd["switch_step"]))  # a scalar; syncs this step
            if switch_step >= 0:
                r.phase.switched_at(switch_step)
                logging.info("adaptive switch at step %d: %s", switch_step, r.phase.why_ended())

    def log_line(done: int, _) -> None:
        records, seconds, timed = meter.interval_done()
        line = train_line(records, seconds, config.data.batch_size * config.data.seq_len, timed, r.flops)
        r.writer.write("train", done, dict(line, train_seconds=meter.clock.total))
        if cfg_t.progress and jax.process_index() == 0:
            rate = meter.steps_per_sec()
            logging.info("step %d/%d | loss %.4f | %.0f tok/s | %.2f steps/s | ETA %s", done, r.total_steps,
                         line["loss"], line["tokens_per_sec"] or 0.0, line["steps_per_sec"] or 0.0,
                         fmt_time((r.total_steps - done) / rate) if rate > 0 else "?")

    def evaluate(done: int, _=None) -> None:
        if done:  # (the evaluation before step 1 comes before the clock starts)
            meter.lap(r.state.step)
        last_eval.update(r.heldout_loss())
        r.writer.write("eval", done, dict(last_eval, train_seconds=meter.clock.total))
        if done:
            per_corpus = "".join(f" | {k[5:]} {v:.4f}" for k, v in last_eval.items() if k.startswith("loss/"))
            logging.info("eval at step %d | held-out loss %.4f | accuracy %.4f%s", done, last_eval["loss"],
                         last_eval["accuracy"], per_corpus)
        meter.clock.skip()  # evaluation time is not training time

    def fewshot(done: int, _=None) -> None:
        if done and not r.fewshot.due(done, cfg_t.heldout_every, r.total_steps):
            return
        if done:
            meter.lap(r.state.step)
        scores = r.fewshot.scores(r.state.params)
        last_fewshot.update(scores)
        r.writer.write("fewshot", done, dict(scores, train_seconds=meter.clock.total))
        if scores:
            logging.info("few-shot at step %d | %s", done, fewshot_lib.describe(scores))
        meter.clock.skip()  # evaluation time is not training time

    def checkpoint(done: int, _) -> None:
        save(done)
        meter.lap()  # (the checks blocked on every step so far)

    def preemption_check(done: int, _) -> None:
        nonlocal preempted
        if done < r.total_steps and preemption.should_stop(sync=done % cfg_t.log_every == 0):
            meter.lap(r.state.step)
            if done % cfg_t.checkpoint_every:  # (a step on the interval is saved already)
                save(done)
            r.ckpt.wait()
            preemption.finished()
            preempted = done
            logging.info("%s: checkpoint at step %d written; re-run the same command to resume",
                         "interrupted" if preemption.signal == "SIGINT" else "preempted", done)

    hooks = Hooks(r.total_steps)
    for fn, every in ((kill_drill, 1), (adaptive_switch, 1), (nan_check.add, 1), (log_line, cfg_t.log_every),
                      (evaluate, cfg_t.heldout_every), (checkpoint, cfg_t.checkpoint_every), (preemption_check, 1)):
        hooks.add(fn, every)
        if fn is evaluate and r.fewshot is not None:
            hooks.add(fewshot, 1)  # (it decides which steps are due)

    if r.start == 0:
        evaluate(0)
        if r.fewshot is not None:
            fewshot(0)
    r.start_prefetch()
    try:
        with faults.Preemption(cfg_t.preemption_grace_s) as preemption:
            for step in range(r.start, r.total_steps):
                if r.teacher is not None and not r.phase.active(step):
                    r.end_kd_phase(step)
                    meter.compiles()
                meter.before_step()
                r.state, step_metrics = r.programs.train(r.state, r.batch(step), r.teacher_input(step))
                meter.after_step(step + 1, step_metrics)
                hooks.run(step + 1, step_metrics)
                if preempted is not None:
                    break
    finally:
        r.stop_prefetch()
    r.ckpt.wait()
    r.ckpt.close()
    r.writer.close()
    summary = _summary(r, last_eval, meter.clock.total, preempted, last_fewshot)
    if preempted is not None:
        summary["signal"] = preemption.signal
    return summary


def describe_corpus(c: dict) -> str:
    """One line: what a run's data was, for the log and the report (a mixture: each corpus, with its weight)."""
    if "mixture" in c:
        return "mixture of " + "; ".join(f"{m['name']} (weight {m['weight']:.3g}): {describe_corpus(m)}"
                                         for m in c["mixture"])
    python = f", Python {c['python']}'s standard library" if "python" in c else ""
    return (f"{c['source']} source {c['source_fingerprint']}{python}: {c['train_files']:,} train files, "
            f"{c['train_tokens']:,} train / {c['heldout_tokens']:,} held-out tokens ({c['tokenizer']}, "
            f"store {c['store']})")


def _summary(r: Run, last_eval: dict, train_seconds: float, preempted: int | None, fewshot: dict) -> dict:
    """The run's summary (written to summary.json when it finished; returned either way)."""
    method = r.config.salt.method
    if preempted is not None:
        return {"preempted": True, "step": preempted, "steps": r.total_steps, "method": method}
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
