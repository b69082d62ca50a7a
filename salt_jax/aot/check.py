"""Compile-check a run for a TPU slice: does each program fit, what does the compiler expect it to cost.

`check(config, slice)` compiles the run's programs (salt_jax.aot.programs) for
the slice's chips and returns a JSON-ready report: per program the memory per
chip against the chip's HBM, whether it fits, the compile time and the
corrected compiler estimate (salt_jax.aot.estimate); for the run, the KD step's
cost over the baseline step's next to the FLOP model's ratio, and the run's
estimated hours. `search` tries mesh shapes and remat policies.
"""

from __future__ import annotations

import copy
import logging
import time

from salt_jax.aot import estimate, programs
from salt_jax.aot.programs import Unroll
from salt_jax.aot.topology import GIB, Slice
from salt_jax.errors import UserError
from salt_jax.model import flops, sharding
from salt_jax.model.transformer import REMAT_POLICIES

_OOM = ("RESOURCE_EXHAUSTED", "Ran out of memory", "exceeds available HBM")


def _compile(progs: programs.Programs, name: str, unroll: Unroll = Unroll()):
    """(compiled program, seconds), or (None, the compiler's out-of-memory line)."""
    t0 = time.perf_counter()
    try:
        return progs.lowered(name, unroll).compile(), time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 -- XlaRuntimeError; only out-of-memory is an answer, not an error
        text = str(e)
        if not any(k in text for k in _OOM):
            raise
        lines = [ln.strip() for ln in text.splitlines() if any(k in ln for k in _OOM[1:])] or [text.splitlines()[0]]
        return None, lines[0][:300]


def _program(progs: programs.Programs, name: str, sl: Slice, with_estimate: bool) -> dict:
    compiled, took = _compile(progs, name)
    if compiled is None:
        return {"fits": False, "compiler": took}
    memory = estimate.memory_of(compiled)
    out = {"fits": memory["peak"] <= sl.hbm_bytes, "compile_seconds": round(took, 1), "memory_bytes": memory}
    if not with_estimate:
        return out
    peak = flops.peak_flops(sl.device_kind)
    base, trips = estimate.cost_of(compiled, peak), progs.loops(name)
    del compiled
    unrolled = {}
    for loop, n in trips.items():
        if n > 1:
            variant, why = _compile(progs, name, Unroll(**{loop: 2}))
            if variant is None:  # without one loop's cost the estimate would be low: give none
                out["estimate"] = {"step_seconds": None, "mfu": None, "label": estimate.LABEL,
                                   "unavailable": f"the variant with the {loop} loop unrolled did not fit: {why}"}
                return out
            unrolled[loop] = estimate.cost_of(variant, peak)
    total = estimate.extrapolate(base, unrolled, trips)
    c = progs.config
    step_teacher = None if progs.cached else progs.teacher_cfg  # (cached logits: no teacher FLOPs in the step)
    out["estimate"] = estimate.step_estimate(total, name, c.model, step_teacher, c.data.batch_size,
                                             c.data.seq_len, sl.chips, peak)
    out["estimate"]["loops"] = trips
    return out


def check(config, sl: Slice, with_estimate: bool = True, names: tuple[str, ...] = ()) -> dict:
    """The compile report of `config` on slice `sl` (see the module docstring)."""
    config = programs.target_config(config, "tpu")
    mesh = sharding.make_mesh(config.mesh, sl.devices)
    sharding.check_batch(config.data.batch_size, mesh)
    teacher_cfg = programs.teacher_config(config)
    progs = programs.Programs(config, mesh, teacher_cfg)
    wanted = names or progs.names
    unknown = [n for n in wanted if n not in progs.names]
    if unknown:
        raise UserError(f"--programs={','.join(wanted)}: this run has no program {unknown[0]!r}; it has "
                        f"{', '.join(progs.names)}")
    report = {"topology": sl.name, "chips": sl.chips, "device_kind": sl.device_kind,
              "hbm_gib_per_chip": round(sl.hbm_bytes / GIB, 2), "mesh": dict(mesh.shape),
              "method": config.salt.method, "student": config.model.preset,
              "teacher": teacher_cfg.preset if teacher_cfg is not None else None,
              "batch": config.data.batch_size, "seq_len": config.data.seq_len, "remat": config.model.remat,
              "attention": config.model.attention, "loss": config.train.loss, "dtype": config.model.dtype,
              "programs": {}}
    for name in wanted:
        logging.info("compiling %s for %s, mesh %s", name, sl.name, dict(mesh.shape))
        report["programs"][name] = _program(progs, name, sl, with_estimate)
    report["fits"] = all(p["fits"] for p in report["programs"].values())
    report.update(_run_summary(progs, report["programs"]))
    return report


def _seconds(programs_report: dict, name: str) -> float | None:
    p = programs_report.get(name) or {}
    return (p.get("estimate") or {}).get("step_seconds")


def _run_summary(progs: programs.Programs, compiled: dict) -> dict:
    """KD/baseline ratio of the estimates next to the FLOP model's; the run's estimated hours (the KD phase's
    steps with the KD step, the rest with the baseline step; SALT_DS's scoring pass not included)."""
    out = {}
    config, teacher_cfg = progs.config, progs.teacher_cfg
    kd, base = _seconds(compiled, "kd"), _seconds(compiled, "baseline")
    if teacher_cfg is not None:
        out["kd_over_baseline_flop_model"] = 1.0 if progs.cached else round(  # cached: the teacher ran offline
            flops.kd_cost_ratio(config.model, teacher_cfg, config.data.seq_len), 4)
        out["kd_over_baseline_estimate"] = round(kd / base, 4) if kd and base else None
    steps = config.train.steps
    n_kd = progs.phase.end
    if base and (teacher_cfg is None or kd):
        seconds = n_kd * (kd or 0.0) + (steps - n_kd) * base
        out["run_estimate"] = {"steps": steps, "kd_steps": n_kd, "hours": round(seconds / 3600, 2),
                               "baseline_hours": round(steps * base / 3600, 2), "label": estimate.LABEL}
    return out


def mesh_candidates(config, chips: int) -> list[tuple[int, int, int]]:
    """(data, fsdp, tensor) shapes worth trying: tensor in 1..8 dividing the KV heads, data 1 or 2, fsdp the
    rest, the batch divisible by data * fsdp."""
    out = []
    for tensor in (1, 2, 4, 8):
        if chips % tensor or config.model.n_kv_heads % tensor:
            continue
        for data in (1, 2):
            rest = chips // tensor
            if rest % data or config.data.batch_size % rest:
                continue
            out.append((data, rest // data, tensor))
    return out


def search(config, sl: Slice, remats: tuple[str, ...] = ("full", "save_out_proj", "save_dots")) -> dict:
    """Every candidate mesh x remat policy, compiled: fits or not, and the estimate of those that fit.

    The run's main program (the KD step, or the baseline step without a
    teacher) decides: the fastest estimate that fits wins, with the run's
    other programs then compiled for it.
    """
    for r in remats:
        if r not in REMAT_POLICIES:
            raise UserError(f"--remats={','.join(remats)}: {r!r} is not a remat policy; use {', '.join(REMAT_POLICIES)}")
    main = "kd" if programs.teacher_config(programs.target_config(config, "tpu")) is not None else "baseline"
    tried = []
    for shape in mesh_candidates(config, sl.chips):
        for remat in remats:
            c = copy.deepcopy(config)
            c.mesh.data, c.mesh.fsdp, c.mesh.tensor = shape
            c.model.remat = remat
            row = {"mesh": shape, "remat": remat}
            try:
                r = check(c, sl, with_estimate=True, names=(main,))
            except UserError as e:  # a shape the torus cannot hold
                row["error"] = str(e)
                tried.append(row)
                continue
            p = r["programs"][main]
            peak = (p.get("memory_bytes") or {}).get("peak")
            row.update(fits=p["fits"], peak_gib=None if peak is None else round(peak / GIB, 3),
                       step_seconds=(p.get("estimate") or {}).get("step_seconds"),
                       mfu=(p.get("estimate") or {}).get("mfu"), compiler=p.get("compiler"))
            logging.info("search: mesh %s remat %s: %s", shape, remat, row)
            tried.append(row)
    fitting = [t for t in tried if t.get("fits") and t.get("step_seconds")]
    best = min(fitting, key=lambda t: t["step_seconds"]) if fitting else None
    out = {"program": main, "candidates": tried, "best": best}
    if best is not None:
        c = copy.deepcopy(config)
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = best["mesh"]
        c.model.remat = best["remat"]
        out["report"] = check(c, sl)
    return out
