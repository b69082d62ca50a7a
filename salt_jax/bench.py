"""Benchmarks, in one process with the same shapes: baseline vs KD step, dense vs chunked loss.

    python -m salt_jax.bench --config=configs/bench.py[:STUDENT] [--config.data.batch_size=8 ...]
        [--teacher=PRESET] [--repeats=20] [--loss_only] [--noloss_bench] [--nocached_bench] [--out=bench.json]

The run config gives everything measured: the student (config.model: sizes, dtype, remat,
attention), batch and sequence length (config.data.batch_size, seq_len), the loss
(config.train.loss, loss_chunk), the mesh (config.mesh) and the KD settings (config.salt;
the KD step runs w0 on every step, whatever the config's method). The teacher is the preset
config.salt.teacher_preset, or --teacher=PRESET when that is empty, or else the model recorded
in config.salt.teacher's checkpoint; it computes in the student's dtype unless
config.salt.teacher_dtype is set, and takes the student's vocabulary. Any config works
(configs/demo.py --teacher=demo-teacher); configs/bench.py pairs each student preset with a
teacher.

Steps: compile time and median step time of the baseline step and of the KD
step (the teacher's forward on every step), their ratio next to the FLOP model
1 + F_T / (3 F_S) (`salt_jax.model.flops`), tokens/s and MFU (when the device's
peak is known), and each compiled step's memory from XLA's memory analysis.
Unless --nocached_bench, also the KD step from cached sparse teacher targets
(config.salt.teacher_logits=cache: no teacher forward; config.salt.cache_k ids per
position, config.salt.cache_targets), its ratio to the baseline, and the cache's bytes per
token. Unless --nocross_bench, also the cross-tokenizer KD step (a teacher with another
tokenizer: ALM over aligned chunks, salt_jax.kd.alm) with the same teacher FLOPs (its
sequence as long as the student's, its vocabulary the student's size, chunks of two tokens
on both sides), timed alternating with the same-tokenizer KD step: its ratio to it.

Loss: forward + backward of the SALT loss alone from random hidden states
(student and teacher widths, the vocabulary given), dense logits vs
`salt_jax.kd.chunked_loss`: compile time, median time, the compiled program's
temporary memory, and on GPU the device's peak bytes in use (chunked runs
first, so its peak is not inflated by the dense one).

Timing: one call to compile and warm up, then `repeats` calls, each blocked on
its result; the median is reported (the baseline is timed before and after the
KD step, against drift). Parameters are random: speed does not depend on them.
Prints a table and writes everything to --out as JSON.

Loop (--loop, instead of the above): what training pays per step, not only what
the step costs. One run is set up as training sets it up (salt_jax.train.setup:
the token store of config.data, the loader, the metrics writer; in a temporary
workdir) and its steps are driven by the training loop's own step path
(salt_jax.train.loop.train_steps: the batch and teacher input from the loader
and its read-ahead thread, the host-to-device copies, the compiled step, the
hooks of every step and the metrics line every config.train.log_every steps)
for the baseline, online KD (the teacher's forward in the step, random
parameters) and cached KD (a teacher cache of config.salt.cache_k targets per
position built at the bench's size by that teacher, read from disk). In each
of --rounds rounds (after one untimed round that compiles), each path in
turn: the on-device step (`--loop_steps` calls on one batch already on the
device, each blocked on its result, as above) and the loop, --loop_steps steps
blocked at the end, with the read-ahead thread reading rows only (the copies
to the device made when the step runs: before issue 35) and with it also
issuing the copies (the default). Medians over rounds; KD/baseline ratios of
each timing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import linen as nn
from ml_collections import config_flags

from salt_jax import paths
from salt_jax.aot.programs import teacher_config
from salt_jax.cli import fail, flags_parser, keep_jax_off_an_absent_tpu, load_config, own_flags_help, setup_logging
from salt_jax.config import set_method, validate
from salt_jax.data.alignment import STATS as ALIGN_STATS
from salt_jax.data.alignment import AlignedBatch
from salt_jax.errors import UserError
from salt_jax.kd import chunked_loss, losses, objective, sparse
from salt_jax.kd import schedules
from salt_jax.kd import teacher_cache
from salt_jax.kd.schedules import KDPhase
from salt_jax.kd.teacher import FixedTeacher, OnlineTeacher
from salt_jax.model import flops, sharding
from salt_jax.model.flops import param_count
from salt_jax.model.transformer import Transformer, abstract_params, dtype_of
from salt_jax.train import faults, hooks, loop, optim
from salt_jax.train import setup as setup_lib
from salt_jax.train import state as state_lib
from salt_jax.train.step import StepPrograms


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    """(first call incl. compile, per-call times of `repeats` later calls), each blocked on its result."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, times


def memory(compiled) -> dict:
    """Bytes from XLA's memory analysis of a compiled program (per device)."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return {"temp_bytes": int(m.temp_size_in_bytes), "peak_bytes": int(peak)}


def device_peak_bytes() -> int | None:
    """The device's peak bytes in use so far (GPU / TPU runtimes report it; CPU does not)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file: configs/bench.py[:STUDENT], or any "
                                          "configs/*.py (the student and every shape).", lock_config=True)
_TEACHER = flags.DEFINE_string("teacher", "", "Teacher preset when config.salt.teacher_preset is empty ('' = the "
                               "model of config.salt.teacher's checkpoint).")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per program (after one call to compile and warm up).")
_LOSS_ONLY = flags.DEFINE_bool("loss_only", False, "Only the dense vs chunked loss benchmark.")
_LOSS_BENCH = flags.DEFINE_bool("loss_bench", True, "Also the dense vs chunked loss benchmark (--noloss_bench: "
                                "only the steps).")
_CACHED_BENCH = flags.DEFINE_bool("cached_bench", True, "Also time the KD step from cached sparse teacher targets "
                                  "(config.salt.cache_k, cache_targets).")
_CROSS_BENCH = flags.DEFINE_bool("cross_bench", True, "Also time the cross-tokenizer KD step (ALM, the same teacher "
                                 "FLOPs) against the same-tokenizer KD step.")
_OUT = flags.DEFINE_string("out", "", "Write the results here as JSON ('' = print only).")
_LOOP = flags.DEFINE_bool("loop", False, "Time the training loop's step path (loader, copies to the device, step, "
                          "per-step bookkeeping) for baseline, online and cached KD, next to the on-device step.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "--loop: timed rounds, each path in turn (after one untimed round).")
_LOOP_STEPS = flags.DEFINE_integer("loop_steps", 20, "--loop: steps of each path and timing per round.")


def model_configs(config: ml_collections.ConfigDict, teacher: str = "") -> tuple[ml_collections.ConfigDict,
                                                                                   ml_collections.ConfigDict]:
    """The run config the steps are timed with (method rkd: w0 on every step) and the teacher's model config:
    the preset config.salt.teacher_preset, else `teacher`, else the model of config.salt.teacher's checkpoint."""
    config = copy.deepcopy(config)
    salt = config.salt
    if teacher and salt.teacher_preset and teacher != salt.teacher_preset:
        raise UserError(f"--teacher={teacher}: the config's teacher is config.salt.teacher_preset="
                        f"{salt.teacher_preset}; drop --teacher or set --config.salt.teacher_preset={teacher}")
    salt.teacher_preset = salt.teacher_preset or teacher
    set_method(config, "rkd")  # w0 on every step: the KD step is the one being timed
    checked = copy.deepcopy(config)
    checked.salt.teacher = checked.salt.teacher or "(random parameters)"  # the bench reads no teacher's weights
    validate(checked)
    if not salt.teacher_preset and not salt.teacher:
        raise UserError("the teacher: config.salt.teacher_preset and config.salt.teacher are empty; pass "
                        "--teacher=PRESET (e.g. demo-teacher) or --config.salt.teacher_preset=PRESET")
    try:
        t_cfg = teacher_config(config)
    except UserError:
        raise UserError(f"the teacher: config.salt.teacher_preset is empty and config.salt.teacher={salt.teacher!r} "
                        "has no readable checkpoint here; pass --teacher=PRESET (e.g. demo-teacher)") from None
    if not salt.teacher_dtype:  # as held in a run with teacher_dtype="", but computing in the student's dtype
        t_cfg.dtype = config.model.dtype
    t_cfg.attention, t_cfg.vocab_size = config.model.attention, config.model.vocab_size
    return config, t_cfg


def _random_targets(batch: int, seq: int, vocab: int, k: int, sharding_) -> sparse.Targets:
    """Sparse targets of the shapes and dtypes a cache feeds the step (random: speed does not depend on them)."""
    r = np.random.default_rng(2)
    logp = np.log(r.dirichlet(np.ones(k + 1), size=(batch, seq)).astype(np.float32))
    arrays = (np.stack([r.choice(vocab, k, replace=False) for _ in range(batch * seq)]).reshape(batch, seq, k)
              .astype(np.int32), logp[..., :k], logp[..., k], logp[..., 0])
    return sparse.Targets(*(jax.device_put(a, sharding_) for a in arrays))


def _random_teacher(t_cfg, mesh) -> OnlineTeacher:
    """The teacher of `t_cfg` with random parameters on the mesh (speed does not depend on them)."""
    t_model = Transformer(t_cfg)
    t_shard = sharding.shardings_for(abstract_params(t_model), mesh)
    with sharding.on_mesh(mesh):
        t_params = jax.jit(lambda r: nn.meta.unbox(t_model.init(r, jnp.zeros((1, 8), jnp.int32))["params"]),
                           out_shardings=t_shard)(jax.random.key(1))
    return OnlineTeacher(t_model, t_cfg, t_params, t_shard, "random", "random", "")


def _compile(programs: StepPrograms, state, tokens, teacher_input=None) -> tuple[dict, float]:
    """(the compiled train step's memory, seconds to lower and compile it); the SALT step with `teacher_input`."""
    t0 = time.perf_counter()
    mem = memory(programs.lower(state, tokens, teacher_input).compile())
    return mem, time.perf_counter() - t0


def _time_steps(programs: StepPrograms, state, tokens, repeats: int, teacher_input=None) -> tuple[Any, list[float]]:
    """(the state after, the per-call times of `repeats` train steps after one warm-up call), each blocked on
    its metrics; the state is donated, so each call takes the one before's."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        state, m = programs.train(state, tokens, teacher_input)
        jax.block_until_ready(m)
        if i:
            times.append(time.perf_counter() - t0)
    return state, times


def _cache_sizes(config, cache_k: int) -> dict:
    """Bytes per token of a float16 cache of `cache_k` ids per position vs the dense float32 logits."""
    id_bytes = 2 if config.model.vocab_size <= 2 ** 16 else 4
    return {"cache_bytes_per_token_float16": cache_k * (id_bytes + 2) + 4,
            "dense_logits_bytes_per_token_float32": config.model.vocab_size * 4}


def _step_numbers(config, t_cfg, compile_s: tuple[float, float], base: list[float], kd: list[float],
                  mem_base: dict, mem_kd: dict) -> dict:
    """The baseline and KD step's results from their compile seconds, times (medians) and compiled memory."""
    batch, seq = config.data.batch_size, config.data.seq_len
    base_med, kd_med = statistics.median(base), statistics.median(kd)
    n_s, n_t = param_count(config.model), param_count(t_cfg)
    run = flops.RunFlops.of(config.model, seq, t_cfg, jax.device_count())
    tok = batch * seq
    return {
        "student_params": n_s, "teacher_params": n_t,
        "baseline_compile_s": compile_s[0], "kd_compile_s": compile_s[1],  # lowering + XLA compilation
        "baseline_step_s": base_med, "kd_step_s": kd_med,
        "measured_ratio": kd_med / base_med,
        "flop_model_ratio_params": 1 + n_t / (3 * n_s),
        "flop_model_ratio": flops.kd_cost_ratio(config.model, t_cfg, seq),
        "baseline_tokens_per_s": tok / base_med, "kd_tokens_per_s": tok / kd_med,
        "baseline_mfu": run.throughput(tok / base_med, kd_share=0.0)["mfu"],
        "kd_mfu_student": run.throughput(tok / kd_med, kd_share=1.0)["mfu"],
        "kd_mfu_with_teacher": run.throughput(tok / kd_med, kd_share=1.0)["mfu_with_teacher"],
        "baseline_memory": mem_base, "kd_memory": mem_kd,
    }


def _aligned_batch(tokens, sharding_) -> AlignedBatch:
    """A cross-tokenizer batch of the student's shapes: the teacher reads a sequence as long as the student's
    (the same teacher FLOPs as the same-tokenizer step), both sides cut into chunks of two tokens."""
    b, t1 = tokens.shape
    t_tokens = np.random.default_rng(3).integers(3, 256, (b, t1), dtype=np.int32)
    chunks = np.broadcast_to((np.arange(t1 - 1, dtype=np.int32) - 1) // 2, (b, t1 - 1)).copy()
    arrays = (np.asarray(tokens), t_tokens, chunks, chunks, np.zeros((b, len(ALIGN_STATS)), np.int32))
    return AlignedBatch(*(jax.device_put(a, sharding_) for a in arrays))


def step_setup(config, t_cfg):
    """What the steps are timed on: (programs(teacher) -> the run's StepPrograms with that teacher, the online
    teacher with random parameters, one batch of random tokens on the mesh, a fresh train state)."""
    batch, seq = config.data.batch_size, config.data.seq_len
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch(batch, mesh, "config.data.batch_size")
    model = Transformer(config.model)
    tx, sched = optim.make_optimizer(config.optim, 1000)
    _, shardings = state_lib.abstract_state(model, tx, seq, mesh)
    phase = KDPhase.from_config(schedules.resolved(config.salt, 1000), 1000, batch, lr=sched)

    def programs(teacher) -> StepPrograms:
        return StepPrograms(model, tx, sched, 0, mesh, shardings, objective.make_loss(config), teacher=teacher,
                            phase=phase)

    tokens = jax.device_put(np.random.default_rng(0).integers(3, config.model.vocab_size, (batch, seq + 1),
                                                              dtype=np.int32), sharding.batch_sharding(mesh))
    return programs, _random_teacher(t_cfg, mesh), tokens, state_lib.create_state(model, tx, seq, mesh, 0)


def bench_steps(config, t_cfg, repeats: int, cache_k: int = 0, cross: bool = False) -> dict:
    """Baseline and KD step times, their ratio, the FLOP model, MFU and compiled memory; with `cache_k`, also
    the KD step from cached sparse targets of `cache_k` ids per position (its ratio to every baseline timing);
    with `cross`, the cross-tokenizer KD step with the same teacher FLOPs, timed alternating with the KD step
    (its ratio to it)."""
    batch, seq = config.data.batch_size, config.data.seq_len
    programs, teacher, tokens, state = step_setup(config, t_cfg)
    steps = programs(teacher)
    mem_base, base_compile = _compile(steps, state, tokens)
    mem_kd, kd_compile = _compile(steps, state, tokens, teacher.params)
    state, base = _time_steps(steps, state, tokens, repeats)
    state, kd = _time_steps(steps, state, tokens, repeats, teacher.params)
    state, base2 = _time_steps(steps, state, tokens, repeats)  # interleaved: guards against drift
    out = _step_numbers(config, t_cfg, (base_compile, kd_compile), base + base2, kd, mem_base, mem_kd)
    if cross:
        x_steps = programs(FixedTeacher(teacher.model, teacher.shardings, teacher.params, config=t_cfg,
                                        aligned=True))
        aligned = _aligned_batch(jax.device_get(tokens), steps.batch_sharding)
        mem_x, x_compile = _compile(x_steps, state, aligned, teacher.params)
        x_times, kd_times = [], list(kd)
        for _ in range(2):  # alternating with the same-tokenizer KD step
            state, t = _time_steps(x_steps, state, aligned, repeats, teacher.params)
            x_times += t
            state, t = _time_steps(steps, state, tokens, repeats, teacher.params)
            kd_times += t
        out.update(cross_compile_s=x_compile, cross_kd_step_s=statistics.median(x_times), cross_memory=mem_x,
                   cross_ratio=statistics.median(x_times) / statistics.median(kd_times))
    if not cache_k:
        return out
    # the same KD step, its teacher input the batch's cached sparse targets
    cached = FixedTeacher.of_targets(_random_targets(batch, seq, config.model.vocab_size, cache_k,
                                                     steps.batch_sharding))
    c_steps = programs(cached)
    mem_cached, c_compile = _compile(c_steps, state, tokens, cached.inputs(0))
    state, c_times = _time_steps(c_steps, state, tokens, repeats, cached.inputs(0))
    state, base3 = _time_steps(steps, state, tokens, repeats)
    c_med = statistics.median(c_times)
    return dict(out, cache_k=cache_k, cached_compile_s=c_compile, cached_kd_step_s=c_med,
                cached_ratio=c_med / statistics.median(base + base2 + base3), cached_memory=mem_cached,
                **_cache_sizes(config, cache_k))


def bench_loss(config, t_cfg, repeats: int) -> dict:
    """Forward + backward of the SALT loss from hidden states: dense logits vs the chunked loss."""
    b, t, v = config.data.batch_size, config.data.seq_len, config.model.vocab_size
    dt = dtype_of(config.model.dtype)
    r = np.random.default_rng(0)
    h_s = jnp.asarray(r.normal(size=(b, t, config.model.d_model)), dt)
    w_s = jnp.asarray(r.normal(size=(config.model.d_model, v)) * config.model.d_model ** -0.5, jnp.float32)
    h_t = jnp.asarray(r.normal(size=(b, t, t_cfg.d_model)), dt)
    w_t = jnp.asarray(r.normal(size=(t_cfg.d_model, v)) * t_cfg.d_model ** -0.5, dtype_of(t_cfg.param_dtype))
    y = jnp.asarray(r.integers(0, v, size=(b, t)), jnp.int32)
    mask = jnp.ones((b, t), jnp.float32)
    kd_w = jnp.full((b, t), 0.5, jnp.float32)
    opts = objective.chunked_options(config)

    args = (h_s, w_s, h_t, w_t, y, mask, kd_w)  # all arguments: constants would be folded at compile time

    def dense(h, w, h_t, w_t, y, mask, kd_w):
        s = jnp.einsum("btd,dv->btv", h.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)
        tl = jnp.einsum("btd,dv->btv", h_t.astype(dt), w_t.astype(dt), preferred_element_type=jnp.float32)
        kd = losses.full_kd_per_token(s, tl, opts.temperature, opts.kd_loss, opts.kd_topk)
        return losses.mixture_stats(losses.token_ce(s, y), kd, kd_w, mask)["loss_sum"]

    def chunked(h, w, h_t, w_t, y, mask, kd_w):
        return chunked_loss.chunked_loss(h, w, y, mask, opts, h_t, w_t, kd_w)["loss_sum"]

    out = {}
    for name, fn in (("chunked", chunked), ("dense", dense)):  # chunked first: see device_peak_bytes
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        t0 = time.perf_counter()
        compiled = step.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        _, times = timed(lambda c=compiled: c(*args), repeats)
        out[name] = dict(memory(compiled), compile_s=compile_s, step_s=statistics.median(times),
                         device_peak_bytes=device_peak_bytes())
    out["time_ratio"] = out["chunked"]["step_s"] / out["dense"]["step_s"]
    if out["dense"].get("temp_bytes"):
        out["temp_ratio"] = out["chunked"]["temp_bytes"] / out["dense"]["temp_bytes"]
        out["peak_ratio"] = out["chunked"]["peak_bytes"] / out["dense"]["peak_bytes"]
    return out


LOOP_PATHS = ("baseline", "online", "cached")  # bench_loop's paths: no teacher, the teacher's forward, cached targets
LOOP_TIMINGS = ("device", "loop_rows_ahead", "loop_device_ahead")  # the on-device step; the loop, copies in or ahead


def _loop_runs(config, t_cfg, workdir: str, total: int) -> dict[str, setup_lib.Run]:
    """The baseline run of `config` set up in `workdir` as training sets it up (salt_jax.train.setup), and the
    same run with the online teacher (random parameters) and with a teacher cache built by it there, each with its
    own state; `total`: the runs' steps (train.steps, the KD phase and the cache's steps)."""
    run_cfg = copy.deepcopy(config)
    set_method(run_cfg, "baseline")
    run_cfg.salt.teacher = run_cfg.salt.teacher_preset = ""
    t = run_cfg.train
    t.steps, t.heldout_every, t.checkpoint_every, t.progress = total, total, total, False  # (never reached)
    base = setup_lib.setup(run_cfg, workdir)
    mesh, batch, seq = base.programs.mesh, config.data.batch_size, config.data.seq_len
    model = Transformer(base.config.model)
    tx, sched = optim.make_optimizer(base.config.optim, total)
    phase = KDPhase.from_config(schedules.resolved(config.salt, total), total, batch, lr=sched)
    online = _random_teacher(t_cfg, mesh)
    spec = teacher_cache.Spec.of(config, "random", base.store.directory, total)
    directory = paths.join(workdir, "teacher_cache")
    manifest = teacher_cache.build(online, base.batches, spec, directory, mesh, base.programs.pad_id,
                                   config.model.vocab_size)
    cached = teacher_cache.CachedTeacher(directory, manifest, spec, mesh, "random", config.data.prefetch)

    def with_teacher(teacher) -> setup_lib.Run:
        return dataclasses.replace(base, teacher=teacher, phase=phase, programs=base.programs.with_teacher(teacher,
                                                                                                          phase),
                                   state=state_lib.create_state(model, tx, seq, mesh, config.seed))
    return {"baseline": base, "online": with_teacher(online), "cached": with_teacher(cached)}


def _loop_round(r: setup_lib.Run, ctx: hooks.Context, after_step: list, start: int, n: int) -> tuple[float, int]:
    """(seconds per step, steps run) of the loop's steps `start` + 1 .. `start` + n, timed from an idle device to
    the last step's state (step `start`, untimed, starts the read-ahead threads)."""
    r.start_prefetch(start)
    try:
        with faults.Preemption(r.config.train.preemption_grace_s) as ctx.preemption:
            loop.train_steps(ctx, after_step, start, start + 1)
            jax.block_until_ready(r.state)
            first = int(r.state.step)
            t0 = time.perf_counter()
            loop.train_steps(ctx, after_step, start + 1, start + 1 + n)
            jax.block_until_ready(r.state)
            seconds = time.perf_counter() - t0
    finally:
        r.stop_prefetch()
        if r.teacher is not None and r.teacher.sparse_targets:  # (a cached teacher's read-ahead; online: kept)
            r.teacher.release()
    return seconds / n, int(r.state.step) - first


def bench_loop(config, t_cfg, rounds: int, n: int, workdir: str | None = None) -> dict:
    """Per-step seconds of the on-device step and of the training loop's step path (rows read ahead and copied
    when the step runs, and copies issued ahead too), for each of LOOP_PATHS, in one process: one untimed round,
    then `rounds` rounds of `n` steps each, the paths in turn; medians over rounds and KD/baseline ratios."""
    if not 0 < config.salt.cache_k <= config.model.vocab_size:
        raise UserError(f"config.salt.cache_k={config.salt.cache_k}: must be in [1, config.model.vocab_size] "
                        "(--loop times cached KD too)")
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="salt_bench_loop_")
    total = (rounds + 1) * 2 * (n + 1) + 2  # (each round: two loop timings of 1 + n steps; the last never reached)
    try:
        runs = _loop_runs(config, t_cfg, workdir, total)
        ctxs = {p: (hooks.Context.of(r), hooks.table(r)) for p, r in runs.items()}
        fixed = {p: (r.batch(0), None if r.teacher is None else
                     (r.teacher.read(0) if r.teacher.sparse_targets else r.teacher.params))
                 for p, r in runs.items()}
        times = {p: {t: [] for t in LOOP_TIMINGS} for p in LOOP_PATHS}
        steps_run = {p: {t: 0 for t in LOOP_TIMINGS} for p in LOOP_PATHS}
        cursor = 0
        for i in range(rounds + 1):
            for p in LOOP_PATHS:
                r, (ctx, after_step) = runs[p], ctxs[p]
                tokens, teacher_input = fixed[p]
                r.state, device = _time_steps(r.programs, r.state, tokens, n, teacher_input)
                per_step = {"device": (statistics.median(device), len(device))}
                for k, ahead in enumerate((False, True)):
                    r.device_ahead = ahead
                    if r.teacher is not None and r.teacher.sparse_targets:
                        r.teacher.device_ahead = ahead
                    per_step[LOOP_TIMINGS[1 + k]] = _loop_round(r, ctx, after_step, cursor + k * (n + 1), n)
                if i:  # (round 0 compiles and warms up)
                    for t, (sec, count) in per_step.items():
                        times[p][t].append(sec)
                        steps_run[p][t] += count
            cursor += 2 * (n + 1)
        for r in runs.values():
            if r.teacher is not None:
                r.teacher.release()
        runs["baseline"].writer.close()
        runs["baseline"].ckpt.close()
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    med = {p: {t: statistics.median(v) for t, v in ts.items()} for p, ts in times.items()}
    return {"rounds": rounds, "steps": n, "log_every": config.train.log_every, "prefetch": config.data.prefetch,
            "cache_k": config.salt.cache_k, "step_s": times, "median_s": med, "steps_run": steps_run,
            "ratio": {p: {t: med[p][t] / med["baseline"][t] for t in LOOP_TIMINGS} for p in LOOP_PATHS[1:]}}


def print_loop(r: dict) -> None:
    lo = r["loop"]
    print(f"device {r['device']} x{r['devices']} | {r['student']} <- {r['teacher']} | batch {r['batch']} x seq "
          f"{r['seq_len']} | vocab {r['vocab']} | {r['dtype']} | loss {r['loss']} | {lo['rounds']} rounds x "
          f"{lo['steps']} steps | log_every {lo['log_every']} | prefetch {lo['prefetch']}")
    names = {"baseline": "baseline", "online": "online KD", "cached": f"cached KD (top-{lo['cache_k']})"}
    print("| path | on-device step ms | loop ms, copies in the step | loop ms, copies ahead | "
          "on-device / baseline | loop / baseline, copies in the step | loop / baseline, copies ahead |")
    print("|---|---|---|---|---|---|---|")
    for p in LOOP_PATHS:
        m = lo["median_s"][p]
        ratios = (" | ".join(f"{lo['ratio'][p][t]:.3f}" for t in LOOP_TIMINGS) if p in lo["ratio"]
                  else "1 | 1 | 1")
        print(f"| {names[p]} | " + " | ".join(f"{m[t] * 1e3:.1f}" for t in LOOP_TIMINGS) + f" | {ratios} |")


def _mib(n) -> str:
    return f"{n / 2**20:,.0f} MiB" if n else "-"


def print_table(r: dict) -> None:
    print(f"device {r['device']} x{r['devices']} | {r['student']} <- {r['teacher']} | batch {r['batch']} x seq "
          f"{r['seq_len']} | vocab {r['vocab']} | {r['dtype']} (teacher {r['teacher_dtype']}) | loss {r['loss']}")
    s = r.get("steps")
    batch_tokens = r["batch"] * r["seq_len"]
    if s:
        mfu = lambda x: f"{100 * x:.1f}%" if x is not None else "n/a"  # noqa: E731
        print("| step | compile s | median ms | tokens/s | MFU | temp memory |")
        print("|---|---|---|---|---|---|")
        print(f"| baseline | {s['baseline_compile_s']:.1f} | {s['baseline_step_s'] * 1e3:.1f} | "
              f"{s['baseline_tokens_per_s']:,.0f} | {mfu(s['baseline_mfu'])} | "
              f"{_mib(s['baseline_memory'].get('temp_bytes'))} |")
        print(f"| KD | {s['kd_compile_s']:.1f} | {s['kd_step_s'] * 1e3:.1f} | {s['kd_tokens_per_s']:,.0f} | "
              f"{mfu(s['kd_mfu_student'])} student, {mfu(s['kd_mfu_with_teacher'])} with teacher | "
              f"{_mib(s['kd_memory'].get('temp_bytes'))} |")
        if "cross_kd_step_s" in s:
            print(f"| KD across tokenizers (ALM) | {s['cross_compile_s']:.1f} | {s['cross_kd_step_s'] * 1e3:.1f} | "
                  f"{batch_tokens / s['cross_kd_step_s']:,.0f} | - | {_mib(s['cross_memory'].get('temp_bytes'))} |")
        if "cached_kd_step_s" in s:
            print(f"| KD, cached top-{s['cache_k']} targets | {s['cached_compile_s']:.1f} | "
                  f"{s['cached_kd_step_s'] * 1e3:.1f} | {batch_tokens / s['cached_kd_step_s']:,.0f} | - | "
                  f"{_mib(s['cached_memory'].get('temp_bytes'))} |")
        print(f"KD/baseline measured {s['measured_ratio']:.3f} | FLOP model 1+F_T/(3F_S) {s['flop_model_ratio']:.3f} "
              f"(from parameter counts {s['flop_model_ratio_params']:.3f})")
        if "cross_ratio" in s:
            print(f"cross-tokenizer KD / same-tokenizer KD measured {s['cross_ratio']:.3f} (the same teacher FLOPs)")
        if "cached_kd_step_s" in s:
            print(f"cached KD/baseline measured {s['cached_ratio']:.3f} | cache "
                  f"{s['cache_bytes_per_token_float16']} bytes/token (float16) vs dense logits "
                  f"{s['dense_logits_bytes_per_token_float32']:,} bytes/token (float32)")
    lo = r.get("loss_bench")
    if lo:
        print("| loss fwd+bwd | compile s | median ms | temp memory | peak memory (analysis) | device peak |")
        print("|---|---|---|---|---|---|")
        for name in ("dense", "chunked"):
            x = lo[name]
            print(f"| {name} | {x['compile_s']:.1f} | {x['step_s'] * 1e3:.1f} | {_mib(x.get('temp_bytes'))} | "
                  f"{_mib(x.get('peak_bytes'))} | {_mib(x.get('device_peak_bytes'))} |")
        extra = f" | temp {lo['temp_ratio']:.3f}, peak {lo['peak_ratio']:.3f}" if "temp_ratio" in lo else ""
        print(f"chunked/dense: time {lo['time_ratio']:.3f}{extra}")


def benchmark(config, t_cfg, repeats: int = 20, steps: bool = True, loss: bool = True, cached: bool = True,
              loop_rounds: tuple[int, int] | None = None, cross: bool = True) -> dict:
    """Everything measured for the run config and teacher of `model_configs`, as one dict (the --out JSON);
    `loop_rounds`: (rounds, steps per round) of bench_loop, under "loop"."""
    m = config.model
    r = {"student": m.preset, "teacher": t_cfg.get("preset", ""), "batch": config.data.batch_size,
         "seq_len": config.data.seq_len, "vocab": m.vocab_size, "dtype": m.dtype, "teacher_dtype": t_cfg.param_dtype,
         "loss": config.train.loss, "chunk": config.train.loss_chunk, "remat": m.remat, "attention": m.attention,
         "repeats": repeats, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
         "backend": jax.default_backend()}
    if steps:
        r["steps"] = bench_steps(config, t_cfg, repeats, config.salt.cache_k if cached else 0, cross)
    if loss:
        r["loss_bench"] = bench_loss(config, t_cfg, repeats)
    if loop_rounds:
        r["loop"] = bench_loop(config, t_cfg, *loop_rounds)
    return r


def _main(argv) -> None:
    del argv
    keep_jax_off_an_absent_tpu()
    setup_logging()
    config = load_config(_CONFIG)
    if _REPEATS.value < 1:
        fail(f"--repeats={_REPEATS.value}: must be at least 1")
    if _LOSS_ONLY.value and not _LOSS_BENCH.value:
        fail("--loss_only with --noloss_bench leaves nothing to measure; drop one")
    if _LOOP.value and (_ROUNDS.value < 1 or _LOOP_STEPS.value < 1):
        fail(f"--rounds={_ROUNDS.value} --loop_steps={_LOOP_STEPS.value}: each must be at least 1")
    try:
        config, t_cfg = model_configs(config, _TEACHER.value)
        if _LOOP.value:  # (instead of the step and loss benchmarks)
            r = benchmark(config, t_cfg, steps=False, loss=False, loop_rounds=(_ROUNDS.value, _LOOP_STEPS.value))
            print_loop(r)
            _write_out(r)
            return
        if _CACHED_BENCH.value and not _LOSS_ONLY.value and not 0 < config.salt.cache_k <= config.model.vocab_size:
            raise UserError(f"config.salt.cache_k={config.salt.cache_k}: must be in [1, config.model.vocab_size] "
                            "(or pass --nocached_bench)")
        r = benchmark(config, t_cfg, _REPEATS.value, steps=not _LOSS_ONLY.value, loss=_LOSS_BENCH.value,
                      cached=_CACHED_BENCH.value, cross=_CROSS_BENCH.value)
    except UserError as e:
        fail(str(e))
    print_table(r)
    _write_out(r)


def _write_out(r: dict) -> None:
    """--out: the results as JSON (its folder made where missing)."""
    if _OUT.value:
        if "/" in _OUT.value.rstrip("/"):
            paths.makedirs(_OUT.value.rsplit("/", 1)[0] or "/")
        paths.write_atomic(_OUT.value, json.dumps(r, indent=1))


def main() -> None:
    app.run(_main, flags_parser=flags_parser(lambda: "\n".join([(__doc__ or "").strip(), "", "flags:",
                                                                  *own_flags_help()]), "salt-bench"))


if __name__ == "__main__":
    main()
