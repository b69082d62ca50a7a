"""Step-time benchmark: baseline step vs fused KD step, in one process, same shapes.

    python -m salt_jax.bench --student=demo-student --teacher=demo-teacher --batch=16 --seq=128 \
        [--repeats=20] [--dtype=float32] [--out=bench.json]

Prints a table and writes JSON: compile times, median step times, the measured
KD/baseline ratio next to the FLOP model (1 + N_T / (3 N_S) from parameter
counts, and the same with attention and the output projection counted via
`salt_jax.model.flops_per_token`). Parameters are random: speed does not depend
on their values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from salt_jax import optim, presets, schedules, sharding, state as state_lib
from salt_jax.config import base_config, set_method
from salt_jax.model import Transformer, flops_per_token, param_count
from salt_jax.teacher import Teacher
from salt_jax.train_step import CompiledSteps


def _timed(fn, repeats: int) -> tuple[float, list[float]]:
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


def bench(student: str, teacher: str, batch: int, seq: int, repeats: int, dtype: str) -> dict:
    config = base_config(student)
    config.model.dtype = dtype
    config.data.seq_len, config.data.batch_size = seq, batch
    set_method(config, "rkd")  # w0 on every step: the KD step is the one being timed
    t_cfg = presets.model_config(teacher)
    t_cfg.dtype = dtype
    t_cfg.vocab_size = config.model.vocab_size
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
    sharding.check_batch(batch, mesh, "--batch")

    model, t_model = Transformer(config.model), Transformer(t_cfg)
    tx, sched = optim.make_optimizer(config.optim, 1000)
    _, shardings = state_lib.abstract_state(model, tx, seq, mesh)
    boxed = jax.eval_shape(lambda r: t_model.init(r, jnp.zeros((1, 8), jnp.int32))["params"], jax.random.key(1))
    t_shard = sharding.shardings_for(boxed, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        t_params = jax.jit(lambda r: nn.meta.unbox(t_model.init(r, jnp.zeros((1, 8), jnp.int32))["params"]),
                           out_shardings=t_shard)(jax.random.key(1))
    teacher_obj = Teacher(t_model, t_cfg, t_params, t_shard, "random", "random", "")
    steps = CompiledSteps(model, tx, sched, 0, mesh, shardings, teacher=teacher_obj, salt=config.salt,
                          kd_weight=schedules.kd_weight_schedule(config.salt, 1000),
                          kd_share=schedules.kd_share_schedule(config.salt, 1000))
    tokens = jax.device_put(np.random.default_rng(0).integers(3, config.model.vocab_size, (batch, seq + 1),
                                                              dtype=np.int32), steps.batch_sharding)
    holder = {"state": state_lib.create_state(model, tx, seq, mesh, 0)}

    def base_step():
        holder["state"], m = steps.train(holder["state"], tokens)
        return m

    def kd_step():
        holder["state"], m = steps.kd_train(holder["state"], tokens, t_params)
        return m

    base_first, base_times = _timed(base_step, repeats)
    kd_first, kd_times = _timed(kd_step, repeats)
    base_first2, base_times2 = _timed(base_step, repeats)  # interleaved: guards against drift
    base_med = statistics.median(base_times + base_times2)
    kd_med = statistics.median(kd_times)
    n_s, n_t = param_count(config.model), param_count(t_cfg)
    f_s, f_t = flops_per_token(config.model, seq), flops_per_token(t_cfg, seq)
    return {
        "student": student, "teacher": teacher, "batch": batch, "seq_len": seq, "dtype": dtype,
        "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
        "student_params": n_s, "teacher_params": n_t,
        "baseline_compile_s": base_first, "kd_compile_s": kd_first,
        "baseline_step_s": base_med, "kd_step_s": kd_med,
        "measured_ratio": kd_med / base_med,
        "flop_model_ratio_params": 1 + n_t / (3 * n_s),
        "flop_model_ratio_full": 1 + f_t / (3 * f_s),
        "baseline_tokens_per_s": batch * seq / base_med,
        "repeats": repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="demo-student")
    p.add_argument("--teacher", default="demo-teacher")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default="")
    a = p.parse_args()
    r = bench(a.student, a.teacher, a.batch, a.seq, a.repeats, a.dtype)
    print(f"device {r['device']} x{r['devices']} | {a.student} ({r['student_params']:,}) <- {a.teacher} "
          f"({r['teacher_params']:,}) | batch {a.batch} x seq {a.seq} | {a.dtype}")
    print(f"baseline step {r['baseline_step_s'] * 1e3:.1f} ms (compile {r['baseline_compile_s']:.1f}s) | "
          f"KD step {r['kd_step_s'] * 1e3:.1f} ms (compile {r['kd_compile_s']:.1f}s)")
    print(f"KD/baseline measured {r['measured_ratio']:.3f} | FLOP model 1+N_T/(3N_S) "
          f"{r['flop_model_ratio_params']:.3f} | with attention + output projection "
          f"{r['flop_model_ratio_full']:.3f}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(r, fh, indent=1)


if __name__ == "__main__":
    main()
