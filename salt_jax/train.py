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

from salt_jax import checkpoints, data, metrics, optim, sharding, state as state_lib
from salt_jax.config import check_vocab, validate
from salt_jax.errors import UserError
from salt_jax.model import Transformer, param_count
from salt_jax.train_step import CompiledSteps


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


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


def evaluate(steps: CompiledSteps, params, eval_set: list[np.ndarray], batch_size: int) -> dict:
    """Mean held-out next-token loss (nats/token) and accuracy over the fixed eval set."""
    shape = (batch_size, eval_set[0].shape[1])
    totals = _sum([steps.eval(params, jax.make_array_from_process_local_data(steps.batch_sharding, b, shape))
                   for b in eval_set])
    n = max(totals["tokens"], 1.0)
    return {"loss": totals["loss_sum"] / n, "accuracy": totals["correct"] / n, "tokens": totals["tokens"]}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) the run in `workdir`; returns the final summary."""
    validate(config)
    os.makedirs(workdir, exist_ok=True)
    cfg_d, cfg_t = config.data, config.train

    cache, tok = data.build_cache(cfg_d)
    check_vocab(config, tok.vocab_size)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch(cfg_d.batch_size, mesh)

    model = Transformer(config.model)
    tx, lr_schedule = optim.make_optimizer(config.optim, cfg_t.steps)
    abstract, shardings = state_lib.abstract_state(model, tx, cfg_d.seq_len, mesh)
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), cfg_t.checkpoint_every,
                                    cfg_t.keep_checkpoints)
    start = ckpt.latest_step()
    if start is None:
        state = state_lib.create_state(model, tx, cfg_d.seq_len, mesh, config.seed)
        start = 0
    else:
        state, _ = ckpt.restore(start, abstract, shardings)
        logging.info("resuming %s from step %d", workdir, start)
    if jax.process_index() == 0:
        _write_config(config, workdir)
    writer = metrics.MetricsWriter(workdir, resume_step=start if start else None)

    n_params = param_count(config.model)
    logging.info("model %s: %s parameters; mesh %s; %d devices", config.model.preset, f"{n_params:,}",
                 dict(mesh.shape), mesh.size)
    steps = CompiledSteps(model, tx, lr_schedule, tok.pad_id, mesh, shardings)
    batches = data.Batches(cache.train, cfg_d.batch_size, cfg_d.seed)
    eval_set = data.eval_batches(cache.heldout, cfg_d.batch_size, cfg_d.eval_batches, tok.pad_id)

    last_eval = None
    if start == 0:
        last_eval = evaluate(steps, state.params, eval_set, cfg_d.batch_size)
        writer.write("eval", 0, last_eval)

    tokens_per_step = cfg_d.batch_size * cfg_d.seq_len
    pending, t_interval, t_run, steps_timed = [], time.time(), time.time(), 0
    for step in range(start, cfg_t.steps):
        state, step_metrics = steps.train(state, batches.device(step, steps.batch_sharding))
        pending.append(step_metrics)
        done = step + 1
        if step == start:  # the first step includes compilation: keep it out of throughput
            jax.block_until_ready(step_metrics)
            logging.info("first step (compile + run) took %.1fs", time.time() - t_interval)
            pending, t_interval, t_run = [], time.time(), time.time()
        if pending and (done % cfg_t.log_every == 0 or done == cfg_t.steps):
            totals = _sum(pending)
            elapsed = time.time() - t_interval
            steps_timed += len(pending)
            loss = totals["loss_sum"] / max(totals["tokens"], 1.0)
            if not np.isfinite(loss):
                ckpt.wait()
                raise UserError(f"training diverged: loss is {loss} at step {done}; lower "
                                "config.optim.learning_rate (the last good checkpoint is kept)")
            line = {
                "loss": loss, "ntp_loss": loss, "kd_loss": None, "kd_weight": 0.0,
                "accuracy": totals["correct"] / max(totals["tokens"], 1.0),
                "learning_rate": float(jax.device_get(step_metrics["learning_rate"])),
                "grad_norm": totals["grad_norm"] / len(pending),
                "tokens_per_sec": len(pending) * tokens_per_step / elapsed,
                "steps_per_sec": len(pending) / elapsed,
            }
            writer.write("train", done, line)
            if cfg_t.progress and jax.process_index() == 0:
                rate = steps_timed / max(time.time() - t_run, 1e-9)
                logging.info("step %d/%d | loss %.4f | %.0f tok/s | %.2f steps/s | ETA %s", done, cfg_t.steps,
                             loss, line["tokens_per_sec"], line["steps_per_sec"],
                             _fmt_time((cfg_t.steps - done) / max(rate, 1e-9)))
            pending, t_interval = [], time.time()
        if done % cfg_t.eval_every == 0 or done == cfg_t.steps:
            t_eval = time.time()
            last_eval = evaluate(steps, state.params, eval_set, cfg_d.batch_size)
            writer.write("eval", done, last_eval)
            logging.info("eval at step %d | held-out loss %.4f | accuracy %.4f", done, last_eval["loss"],
                         last_eval["accuracy"])
            t_interval += time.time() - t_eval  # evaluation time is not training throughput
        ckpt.save(done, state, {"step": done, "data_seed": cfg_d.seed}, force=done == cfg_t.steps)
    ckpt.wait()
    ckpt.close()
    writer.close()

    if last_eval is None:  # resumed after the run had already finished
        last_eval = evaluate(steps, state.params, eval_set, cfg_d.batch_size)
    summary = {"steps": cfg_t.steps, "final_eval_loss": last_eval["loss"],
               "final_eval_accuracy": last_eval["accuracy"], "parameters": n_params,
               "train_seconds": time.time() - t_run}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)
    return summary
