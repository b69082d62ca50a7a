"""One training run, top to bottom: data, mesh, state (fresh or restored), the loop.

The loop is: batch for step s -> compiled step -> every log_every steps a
metrics line and a progress line, every eval_every steps a held-out
evaluation, every checkpoint_every steps an (async) Orbax checkpoint.
Re-running on the same workdir resumes from the latest checkpoint and, because
batches are step-indexed, ends with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np

from salt_jax import checkpoints, data, metrics, optim, schedules, selection, sharding, state as state_lib
from salt_jax import faults, teacher as teacher_lib, throughput
from salt_jax.chunked_loss import options_from_config
from salt_jax.config import check_vocab, validate
from salt_jax.hf import adopt_teacher_vocabulary
from salt_jax.errors import UserError
from salt_jax.model import Transformer, flops_per_token, param_count
from salt_jax.train_step import CompiledSteps, Guard


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class TrainClock:
    """Seconds spent in training steps, carried across resumes.

    Evaluation and the steps that compile a program (a process's first step,
    the first step without the teacher) are left out. Call `lap` only after
    blocking on the work it should count.
    """

    def __init__(self, already: float = 0.0):
        self.total, self._mark = already, time.time()

    def lap(self) -> float:
        """Adds the time since the last lap/skip to the total and returns it."""
        now = time.time()
        dt, self._mark = now - self._mark, now
        self.total += dt
        return dt

    def skip(self) -> float:
        """Forgets (and returns) the time since the last lap/skip."""
        now = time.time()
        dt, self._mark = now - self._mark, now
        return dt


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if os.path.exists(path):
        with open(path) as fh:
            if fh.read() != text:
                logging.warning("%s differs from this run's config; resuming with the new config and "
                                "keeping the old file as config.prev.json", path)
                os.replace(path, os.path.join(workdir, "config.prev.json"))
    with open(path, "w") as fh:
        fh.write(text)


def _sum(records: list[dict]) -> dict:
    host = jax.device_get(records)
    return {k: float(np.sum([r[k] for r in host])) for k in host[0]}


def train_line(records: list[dict], seconds: float, tokens_per_step: int, timed_steps: int,
               flops: dict | None = None) -> dict:
    """One metrics.jsonl train line from the per-step sums of a log interval.

    Steps with and without the teacher may be mixed (the interval of the switch):
    KD-only quantities average over the KD steps, and are null when there were none.
    `flops` ({"student", "teacher", "devices", "peak"}: FLOPs per token of the
    student's training and of the teacher's forward, device count, per-device
    peak or None) adds model TFLOP/s and MFU, for the student alone and with
    the teacher's forward (see salt_jax.throughput).
    """
    host = jax.device_get(records)
    total = lambda key, rs=host: float(np.sum([r[key] for r in rs]))  # noqa: E731
    tokens = max(total("tokens"), 1.0)
    kd_steps = [r for r in host if "kd_sum" in r]
    kd_tokens = max(total("tokens", kd_steps), 1.0)
    finite_norms = [float(r["grad_norm"]) for r in host if np.isfinite(r["grad_norm"])]
    return {
        "loss": total("loss_sum") / tokens,
        "ntp_loss": total("ntp_sum") / tokens,
        "kd_loss": total("kd_sum", kd_steps) / kd_tokens if kd_steps else None,
        "teacher_ntp_loss": total("teacher_ntp_sum", kd_steps) / kd_tokens if kd_steps else None,
        "kd_weight": float(np.mean([float(r.get("kd_weight", 0.0)) for r in host])),
        "kd_token_fraction": (total("kd_tokens", kd_steps) / tokens) if kd_steps else 0.0,
        "accuracy": total("correct") / tokens,
        "learning_rate": float(host[-1]["learning_rate"]),
        "grad_norm": float(np.mean(finite_norms)) if finite_norms else None,
        "skipped_steps": int(sum(float(r.get("skipped", 0.0)) for r in host)),
        "tokens_per_sec": timed_steps * tokens_per_step / seconds if timed_steps else None,
        "steps_per_sec": timed_steps / seconds if timed_steps else None,
    } | _throughput(timed_steps * tokens_per_step / seconds if timed_steps else None, len(kd_steps) / len(host),
                    flops)


def _throughput(tokens_per_sec: float | None, kd_share: float, flops: dict | None) -> dict:
    """Model TFLOP/s (teacher forward included) and MFU of the student alone and with the teacher."""
    if flops is None or not tokens_per_sec:
        return {"model_tflops_per_sec": None, "mfu": None, "mfu_with_teacher": None}
    per_tok = flops["student"] + kd_share * flops["teacher"]
    return {"model_tflops_per_sec": tokens_per_sec * per_tok / 1e12,
            "mfu": throughput.mfu(tokens_per_sec, flops["student"], flops["devices"], flops["peak"]),
            "mfu_with_teacher": throughput.mfu(tokens_per_sec, per_tok, flops["devices"], flops["peak"])}


def evaluate(steps: CompiledSteps, params, eval_set: list[np.ndarray], batch_size: int) -> dict:
    """Mean held-out next-token loss (nats/token) and accuracy over the fixed eval set."""
    shape = (batch_size, eval_set[0].shape[1])
    totals = _sum([steps.eval(params, jax.make_array_from_process_local_data(steps.batch_sharding, b, shape))
                   for b in eval_set])
    n = max(totals["tokens"], 1.0)
    return {"loss": totals["loss_sum"] / n, "accuracy": totals["correct"] / n, "tokens": totals["tokens"]}


class SkipCounter:
    """Host side of the non-finite-step policy (config.train.nan_policy), checked before every checkpoint.

    stop: the first non-finite loss or gradient ends the run with a UserError,
    before the poisoned state can be saved (the last good checkpoint is kept).
    skip: the step already dropped its update in-graph (train_step.Guard); each
    one is logged, and `max_skipped` in a row ends the run the same way.
    """

    def __init__(self, policy: str, max_skipped: int, ckpt):
        self.policy, self.max_skipped, self.ckpt, self.in_a_row = policy, max_skipped, ckpt, 0

    def check(self, step_metrics: list[dict], done: int) -> None:
        host = jax.device_get([(m["loss"], m["grad_norm"]) for m in step_metrics])
        for i, (loss, grad) in enumerate(host):
            step = done - len(host) + i + 1
            if np.isfinite(loss) and np.isfinite(grad):
                self.in_a_row = 0
                continue
            self.in_a_row += 1
            if self.policy == "skip" and self.in_a_row < self.max_skipped:
                logging.warning("step %d: non-finite loss or gradients; update skipped (config.train.nan_policy="
                                "skip)", step)
                continue
            self.ckpt.wait()
            last = self.ckpt.latest_step()
            what = (f"{self.in_a_row} steps in a row (config.train.max_skipped_steps={self.max_skipped})"
                    if self.policy == "skip" else f"step {step}")
            kept = f"the last good checkpoint, step {last}, is kept" if last is not None else "no checkpoint yet"
            raise UserError(f"training diverged: non-finite loss or gradients at {what}; lower "
                            f"config.optim.learning_rate or set config.train.nan_policy=skip ({kept})")


def _end_kd_phase(steps: CompiledSteps, teacher, step: int) -> None:
    """From `step` on, train with the teacher-free step and free the teacher's memory."""
    steps.drop_teacher()
    teacher.release()
    logging.info("KD phase over at step %d: teacher released, training continues without it", step)


def _selected_batches(config, cache, teacher, mesh, pad_id: int, kd_end: int, workdir: str) -> data.Batches:
    """SALT_DS: score the pool with the teacher, select, and batch the KD phase from the selection."""
    salt, cfg_d = config.salt, config.data
    pool_size = salt.ds_pool_size
    if pool_size == -1:  # enough sequences that the KD phase sees each kept one about once
        pool_size = min(cache.train.n_rows, int(np.ceil(kd_end * cfg_d.batch_size / salt.ds_keep_fraction)))
    rows = selection.pool_rows(cache.train.n_rows, pool_size, salt.ds_seed)
    scores = selection.score_pool(teacher, cache, rows, salt.ds_topk, cfg_d.batch_size, mesh, pad_id)
    kept = selection.select(scores["score"], salt.ds_keep_fraction, salt.ds_band_low, salt.ds_band_high,
                            salt.ds_seed)
    info = selection.summary(scores, kept, salt.ds_topk, salt.ds_keep_fraction, (salt.ds_band_low,
                                                                                 salt.ds_band_high))
    selection.write_summary(workdir, info)
    logging.info("SALT_DS: kept %d of %d pooled sequences (median score %.3f kept vs %.3f pool)", info["kept"],
                 info["pool"], info["score_quantiles_kept"]["p50"], info["score_quantiles_pool"]["p50"])
    return data.Batches(cache.train, cfg_d.batch_size, cfg_d.seed, rows=rows[kept])


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) the run in `workdir`; returns the final summary."""
    validate(config)
    adopt_teacher_vocabulary(config)  # a Hugging Face teacher: its tokenizer and vocabulary size
    schedules.resolve(config.salt, config.train.steps)  # config.json records the step counts used
    os.makedirs(workdir, exist_ok=True)
    cfg_d, cfg_t, salt = config.data, config.train, config.salt

    cache, tok = data.build_cache(cfg_d)
    check_vocab(config, tok.vocab_size)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch(cfg_d.batch_size, mesh)

    model = Transformer(config.model)
    tx, lr_schedule = optim.make_optimizer(config.optim, cfg_t.steps)
    abstract, shardings = state_lib.abstract_state(model, tx, cfg_d.seq_len, mesh)
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), cfg_t.checkpoint_every,
                                    cfg_t.keep_checkpoints)

    def same_model(record: dict) -> None:
        if record.get("model") and record["model"] != config.model.to_dict():
            changed = sorted(k for k in record["model"] if record["model"][k] != config.model.to_dict().get(k))
            raise UserError(f"config.model.{changed[0] if changed else 'preset'}: differs from the model of the "
                            f"checkpoints in {ckpt.directory}; use the run's original model config or a fresh "
                            "--workdir")

    start, state, previous = ckpt.restore_latest(abstract, shardings, same_model)
    if start is None:
        state = state_lib.create_state(model, tx, cfg_d.seq_len, mesh, config.seed)
        start = 0
    else:
        logging.info("resuming %s from step %d", workdir, start)
    kd_end = schedules.kd_end_step(salt, cfg_t.steps)
    kd_over = bool(previous) and (start >= kd_end or 0 < previous.get("kd_phase_end", 0) <= start)

    teacher = None
    if salt.method in ("rkd", "salt", "salt_ds") and not kd_over:
        # vocabulary checks happen here, before anything is compiled
        teacher = teacher_lib.load_teacher(salt, config.model, tok.fingerprint(), mesh)
        logging.info("teacher %s: %s parameters, fingerprint %s", teacher.checkpoint,
                     f"{param_count(teacher.config):,}", teacher.fingerprint)
        was = previous.get("teacher") or {}
        if was and was.get("fingerprint") != teacher.fingerprint:
            raise UserError(f"config.salt.teacher={salt.teacher}: this run was trained with teacher "
                            f"{was.get('checkpoint')} (fingerprint {was.get('fingerprint')}), not "
                            f"{teacher.checkpoint} (fingerprint {teacher.fingerprint}); resume with the same "
                            "teacher or use a fresh --workdir")

    resumed_seconds = float(previous.get("train_seconds", 0.0))
    if jax.process_index() == 0:
        _write_config(config, workdir)
    writer = metrics.MetricsWriter(workdir, resume_step=start)

    n_params = param_count(config.model)
    logging.info("model %s: %s parameters; mesh %s; %d devices", config.model.preset, f"{n_params:,}",
                 dict(mesh.shape), mesh.size)
    switch_step = int(jax.device_get(state.kd["switch_step"]))
    steps = CompiledSteps(model, tx, lr_schedule, tok.pad_id, mesh, shardings, teacher=teacher, salt=salt,
                          kd_weight=schedules.kd_weight_schedule(salt, cfg_t.steps),
                          kd_share=schedules.kd_share_schedule(salt, cfg_t.steps),
                          loss_opts=options_from_config(config) if cfg_t.get("loss") == "chunked" else None,
                          guard=Guard(skip_nonfinite=cfg_t.get("nan_policy", "stop") == "skip",
                                      nan_steps=faults.parse_steps(cfg_t.get("debug_nan_steps", ""),
                                                                   "config.train.debug_nan_steps")))
    flops = {"student": throughput.train_flops_per_token(config.model, cfg_d.seq_len),
             "teacher": flops_per_token(teacher.config, cfg_d.seq_len) if teacher else 0.0,
             "devices": mesh.size, "peak": throughput.peak_flops(override_tflops=cfg_t.get("peak_tflops", 0.0))}
    record = {"data_seed": cfg_d.seed, "method": salt.method, "model": config.model.to_dict(),
              "tokenizer": tok.fingerprint(), "vocab_size": tok.vocab_size,
              "teacher": teacher.identity() if teacher is not None else previous.get("teacher")}
    kd_phase_end = 0 if salt.method in ("baseline", "teacher") else switch_step if switch_step >= 0 else kd_end
    batches = data.Batches(cache.train, cfg_d.batch_size, cfg_d.seed)
    kd_batches = batches
    if salt.method == "salt_ds" and teacher is not None:
        kd_batches = _selected_batches(config, cache, teacher, mesh, tok.pad_id, kd_end, workdir)
    eval_set = data.eval_batches(cache.heldout, cfg_d.batch_size, cfg_d.eval_batches, tok.pad_id)

    last_eval = None
    if start == 0:
        last_eval = evaluate(steps, state.params, eval_set, cfg_d.batch_size)
        writer.write("eval", 0, dict(last_eval, train_seconds=0.0))

    tokens_per_step = cfg_d.batch_size * cfg_d.seq_len
    clock = TrainClock(resumed_seconds)
    pending, unchecked, interval, untimed, t_rate, steps_timed = [], [], 0.0, 0, time.time(), 0
    compile_next = True  # the next step compiles a program: keep it off the clock
    kill = faults.KillHooks(cfg_t.get("debug_kill", ""))
    skips = SkipCounter(cfg_t.get("nan_policy", "stop"), cfg_t.get("max_skipped_steps", 20), ckpt)

    def save(done: int) -> None:
        skips.check(unchecked, done)  # never checkpoint a poisoned state
        unchecked.clear()
        ckpt.save(done, state, dict(record, step=done, kd_phase_end=kd_phase_end, train_seconds=clock.total),
                  force=True)
        kill.maybe_kill("save", done)

    preempted = None
    with faults.Preemption(cfg_t.get("preemption_grace_s", 30.0)) as preemption:
        for step in range(start, cfg_t.steps):
            if step > start and preemption.should_stop(sync=step % cfg_t.log_every == 0):
                jax.block_until_ready(state.step)
                interval += clock.lap()
                if step % cfg_t.checkpoint_every:  # (a step on the interval is saved already)
                    save(step)
                ckpt.wait()
                preemption.finished()
                preempted = step
                logging.info("preempted: checkpoint at step %d written; re-run the same command to resume", step)
                break
            compiling, compile_next = compile_next, False
            if teacher is not None and step >= kd_end:
                _end_kd_phase(steps, teacher, step)
                teacher, compiling = None, True
            tokens = (kd_batches if teacher is not None else batches).device(step, steps.batch_sharding)
            if compiling:
                jax.block_until_ready(pending)
                interval += clock.lap()
                t_compile = time.time()
            if teacher is not None:
                state, step_metrics = steps.kd_train(state, tokens, teacher.params)
                if salt.switch == "adaptive":
                    switch_step = int(jax.device_get(state.kd["switch_step"]))  # a scalar; syncs this step
                    if switch_step >= 0:
                        kd_phase_end = switch_step
                        why = ("reached config.salt.adaptive_max_steps" if switch_step >= salt.adaptive_max_steps
                               else "the student caught up with the teacher")
                        logging.info("adaptive switch at step %d: %s", switch_step, why)
                        _end_kd_phase(steps, teacher, step + 1)
                        teacher, compile_next = None, True
            else:
                state, step_metrics = steps.train(state, tokens)
            pending.append(step_metrics)
            unchecked.append(step_metrics)
            done = step + 1
            if kill.wants("step", done):
                jax.block_until_ready(state.step)
                ckpt.wait()  # the drill names where the resume starts: earlier checkpoints are on disk
                kill.maybe_kill("step", done)
            if compiling:
                jax.block_until_ready(step_metrics)
                logging.info("step %d compiled and ran in %.1fs", done, clock.skip())
                untimed, t_rate = untimed + 1, t_rate + (time.time() - t_compile)
            if done % cfg_t.log_every == 0 or done == cfg_t.steps:
                jax.block_until_ready(pending)  # steps run asynchronously: wait before reading the clock
                interval += clock.lap()
                timed = len(pending) - untimed
                steps_timed += timed
                line = train_line(pending, interval, tokens_per_step, timed, flops)
                writer.write("train", done, dict(line, train_seconds=clock.total))
                if cfg_t.progress and jax.process_index() == 0:
                    rate = steps_timed / max(time.time() - t_rate, 1e-9)
                    logging.info("step %d/%d | loss %.4f | %.0f tok/s | %.2f steps/s | ETA %s", done, cfg_t.steps,
                                 line["loss"], line["tokens_per_sec"] or 0.0, line["steps_per_sec"] or 0.0,
                                 _fmt_time((cfg_t.steps - done) / rate) if rate > 0 else "?")
                pending, interval, untimed = [], 0.0, 0
            if done % cfg_t.eval_every == 0 or done == cfg_t.steps:
                jax.block_until_ready(state.step)
                interval += clock.lap()
                last_eval = evaluate(steps, state.params, eval_set, cfg_d.batch_size)
                writer.write("eval", done, dict(last_eval, train_seconds=clock.total))
                logging.info("eval at step %d | held-out loss %.4f | accuracy %.4f", done, last_eval["loss"],
                             last_eval["accuracy"])
                clock.skip()  # evaluation time is not training time
            if done % cfg_t.checkpoint_every == 0 or done == cfg_t.steps:
                save(done)
                interval += clock.lap()  # (the checks blocked on every step so far)
    ckpt.wait()
    ckpt.close()
    writer.close()

    if preempted is not None:
        return {"preempted": True, "step": preempted, "steps": cfg_t.steps, "method": salt.method}
    if last_eval is None:  # resumed after the run had already finished
        last_eval = evaluate(steps, state.params, eval_set, cfg_d.batch_size)
    summary = {"steps": cfg_t.steps, "final_eval_loss": last_eval["loss"],
               "final_eval_accuracy": last_eval["accuracy"], "parameters": n_params,
               "method": salt.method, "kd_phase_end": kd_phase_end,
               "train_seconds": clock.total if start < cfg_t.steps else resumed_seconds}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)
    return summary
