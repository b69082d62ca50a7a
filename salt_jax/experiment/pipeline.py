"""The comparison pipeline: teacher, then the student under each method and seed, then the report.

Each run is an ordinary training run in DIR/<method>-s<seed>/ (the teacher in
DIR/teacher/ unless the config names one), so each resumes on its own; runs
that already finished are skipped, so re-running the command after an
interruption continues where it stopped. Writes DIR/results.json,
DIR/report.md and the PNG plots.

The runs come in three batches of independent runs: the teachers, the
learning-rate sweep (if any), the students. A runner trains a batch: one run
after the other here (`train_in_order`), or all at once as Ray tasks
(ray_runs.py, --engine=ray); either way each run is `_train(config, workdir,
label)`, so the workdirs, resumption and report are the same.
"""

from __future__ import annotations

import copy
import json
import logging
import re

import jax
import ml_collections

from salt_jax import paths
from salt_jax.config import drift, resolved, set_method, validate
from salt_jax.errors import UserError
from salt_jax.experiment import plots, report, writeup
from salt_jax.kd import methods as kd_methods
from salt_jax.hf.source import resolve as resolve_teacher
from salt_jax.kd.teacher import model_config
from salt_jax.model.flops import embedding_params, param_count
from salt_jax.train import faults, loop

_SPEC = re.compile(r"^([a-z_\-]+)(?:\[(.*)\])?$")


def parse_method(spec: str) -> tuple[str, dict]:
    """'salt[kd_steps=50,kd_weight=0.8]' -> ('salt', {'kd_steps': 50, 'kd_weight': 0.8})."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise UserError(f"config.methods: cannot read {spec!r}; write VARIANT or VARIANT[field=value,...]")
    overrides = {}
    for item in filter(None, (m.group(2) or "").split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return m.group(1), overrides


def split_methods(methods: str) -> list[str]:
    """Splits 'baseline,salt[kd_steps=50,kd_weight=0.8]' on the commas outside brackets."""
    return [m.strip() for m in re.split(r",(?![^\[]*\])", methods) if m.strip()]


def run_name(spec: str) -> str:
    variant, overrides = parse_method(spec)
    return variant + "".join(f"-{k}{v}" for k, v in overrides.items())


def _teachers(exp: ml_collections.ConfigDict) -> dict:
    """The experiment's extra named teachers (config.teachers: name -> run config), if any."""
    return dict(exp.get("teachers") or {})


def teacher_workdir(workdir: str, name: str) -> str:
    """Where the extra teacher `name` of config.teachers is trained."""
    return paths.join(workdir, f"teacher-{name}")


def student_config(exp: ml_collections.ConfigDict, spec: str, seed: int, teacher_dir: str,
                   learning_rate: float, workdir: str = "") -> ml_collections.ConfigDict:
    """The run config of one (method, seed): the shared student config plus the method's settings.

    A method's overrides name config.salt fields (`kd_weight=0.9`) or, with a dot, any field
    (`train.steps=210`). salt.teacher and salt.ds_reference may name one of config.teachers, which
    then stands for that teacher's workdir under `workdir`.
    """
    c = copy.deepcopy(exp.student)
    variant, overrides = parse_method(spec)
    set_method(c, variant)
    teacher = teacher_dir
    for key, value in overrides.items():
        section, field = key.rsplit(".", 1) if "." in key else ("salt", key)
        node = c
        for part in section.split("."):
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or field not in node:
            raise UserError(f"config.methods: {spec!r} sets {section}.{field}, which does not exist")
        if section == "salt" and field in ("teacher", "ds_reference") and value in _teachers(exp):
            value = teacher_workdir(workdir, value)
        want = type(node[field])
        ok = isinstance(value, want) or (want is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise UserError(f"config.methods: {spec!r} sets {section}.{field}={value!r}; it must be a "
                            f"{want.__name__}")
        if section == "salt" and field == "teacher":
            teacher = value
        else:
            node[field] = want(value)
    c.seed = seed
    c.data.seed = seed
    c.optim.learning_rate = learning_rate
    c.salt.teacher = teacher if kd_methods.method(c.salt.method).teacher else ""  # (a baseline names none)
    c.train.progress = exp.progress
    return c


# Where things live, how chatty a run is and where it logs do not change what it computes (the teacher itself is
# checked by fingerprint on resume). Unlike a single run, an experiment's runs must also keep their
# evaluation and logging, which the report compares across runs.
_SAME_ACROSS_RUNS = ("salt.teacher", "salt.ds_reference", "data.cache_dir", "train.progress", "logging")


def _check_same_config(config, workdir: str) -> None:
    """A run directory is reused only for the very config the experiment wants there."""
    path = paths.join(workdir, "config.json")
    if not paths.exists(path):
        return
    found = drift(paths.read_json(path), resolved(config), _SAME_ACROSS_RUNS)
    if found:
        raise UserError(f"{workdir} holds a run with another config: {found[0]}; use a fresh --workdir for "
                        "changed settings (or remove that run directory)")


def _finished(workdir: str, steps: int) -> bool:
    path = paths.join(workdir, "summary.json")
    return paths.exists(path) and paths.read_json(path).get("steps") == steps


def _train(config, workdir: str, label: str) -> None:
    _check_same_config(config, workdir)
    if _finished(workdir, config.train.steps):
        logging.info("[%s] already finished in %s: skipped", label, workdir)
        return
    logging.info("[%s] training in %s", label, workdir)
    try:
        loop.run(config, workdir)
    except faults.Preempted as e:  # (the run's checkpoint is written; the experiment's command resumes it)
        raise type(e)(f"[{label}] {e.args[0].split(';')[0]}; re-run the same command to resume the "
                      "experiment") from None


def train_in_order(runs: list[tuple[str, str, ml_collections.ConfigDict]]) -> None:
    """The sequential runner: each (label, workdir, config) of a batch in turn, in this process."""
    for label, workdir, config in runs:
        _train(config, workdir, label)


def _choose_lr(exp, workdir: str, teacher_dir: str, runner=train_in_order) -> tuple[float, str]:
    """The baseline's best learning rate over exp.lr_sweep (seed 0), or the configured one."""
    default = float(exp.student.optim.learning_rate)
    grid = _lr_grid(exp)
    if not grid:
        return default, exp.lr_note or "fixed in the experiment config."
    sweep = {lr: paths.join(workdir, "lr_sweep", f"baseline-lr{lr:g}") for lr in grid}
    runner([(f"lr sweep {lr:g}", d, student_config(exp, "baseline", 0, teacher_dir, lr)) for lr, d in sweep.items()])
    finals = {lr: report.RunOutputs(d).evals[-1]["loss"] for lr, d in sweep.items()}
    best = min(finals, key=finals.get)
    detail = ", ".join(f"{lr:g}: {loss:.4f}" for lr, loss in finals.items())
    return best, f"the best final held-out loss of the baseline (seed 0) over a sweep ({detail})."


def _corpus(runs: list[report.RunOutputs]) -> str:
    """The baseline runs' corpus (every run of an experiment trains on the same store), as one line."""
    found = {json.dumps(r.summary["corpus"], sort_keys=True) for r in runs if r.summary.get("corpus")}
    if not found:
        return "not recorded (runs trained before salt_jax recorded it)"
    return "; ".join(loop.describe_corpus(json.loads(c)) for c in sorted(found))


def _teacher_model(teacher_dir: str) -> ml_collections.ConfigDict:
    return model_config(resolve_teacher(teacher_dir))


def plan(exp: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, str, ml_collections.ConfigDict]]:
    """Every run the experiment trains, in order, as (label, run workdir, run config), each config validated:
    checked before anything trains, and what `--dry_run` prints. Students are shown with the configured
    learning rate (a config.lr_sweep picks theirs after the sweep's runs)."""
    methods = split_methods(exp.methods)
    seeds = [int(s) for s in str(exp.seeds).split(",") if s.strip()]
    if "baseline" not in methods:
        raise UserError("config.methods must include 'baseline': every method is compared against it")
    if not seeds:
        raise UserError("config.seeds is empty; give at least one seed, e.g. '0'")
    for spec in methods:  # every name is checked before anything trains
        name, _ = parse_method(spec)
        if name not in kd_methods.VARIANTS:
            raise UserError(f"config.methods: unknown method {name!r} in {spec!r}; use one of "
                            f"{', '.join(kd_methods.VARIANTS)}")
    teacher = resolve_teacher(exp.teacher_path, "config.teacher_path") if exp.teacher_path else None
    teacher_dir = teacher.path if teacher else paths.join(workdir, "teacher")
    runs = [] if exp.teacher_path else [("teacher", teacher_dir, exp.teacher)]
    runs += [(f"teacher {name}", teacher_workdir(workdir, name), config) for name, config in _teachers(exp).items()]
    lr = float(exp.student.optim.learning_rate)
    runs += [(f"lr sweep {x:g}", paths.join(workdir, "lr_sweep", f"baseline-lr{x:g}"),
              student_config(exp, "baseline", 0, teacher_dir, x)) for x in _lr_grid(exp)]
    runs += [(f"{spec} seed {seed}", paths.join(workdir, f"{run_name(spec)}-s{seed}"),
              student_config(exp, spec, seed, teacher_dir, lr, workdir)) for spec in methods for seed in seeds]
    for label, _, config in runs:
        try:
            validate(config)
        except UserError as e:
            raise UserError(f"[{label}] {e}") from None
    return runs


def _lr_grid(exp: ml_collections.ConfigDict) -> list[float]:
    return [float(x) for x in str(exp.lr_sweep).split(",") if x.strip()]


def run_experiment(exp: ml_collections.ConfigDict, workdir: str, runner=train_in_order) -> dict:
    """Trains whatever is missing and writes results.json, report.md and the plots. `runner` trains each
    batch of independent runs (default: one after the other in this process)."""
    plan(exp, workdir)  # every config checked before anything trains
    paths.makedirs(workdir)
    methods = split_methods(exp.methods)
    seeds = [int(s) for s in str(exp.seeds).split(",") if s.strip()]
    teacher_dir = paths.expand(exp.teacher_path) if exp.teacher_path else paths.join(workdir, "teacher")
    teachers = [] if exp.teacher_path else [("teacher", teacher_dir, exp.teacher)]
    # other teachers the methods may name (teacher=NAME)
    teachers += [(f"teacher {name}", teacher_workdir(workdir, name), c) for name, c in _teachers(exp).items()]
    runner(teachers)
    lr, lr_note = _choose_lr(exp, workdir, teacher_dir, runner)
    students = [(spec, paths.join(workdir, f"{run_name(spec)}-s{seed}"), seed) for spec in methods for seed in seeds]
    runner([(f"{spec} seed {seed}", d, student_config(exp, spec, seed, teacher_dir, lr, workdir))
            for spec, d, seed in students])

    runs: dict[str, list[report.RunOutputs]] = {}
    for spec, d, _ in students:
        run = report.RunOutputs(d)
        if run.config.salt.teacher != teacher_dir and kd_methods.method(run.config.salt.method).teacher:
            run.teacher_cfg = _teacher_model(run.config.salt.teacher)  # (its FLOPs, not the main teacher's)
        runs.setdefault(run_name(spec), []).append(run)

    teacher_cfg = _teacher_model(teacher_dir)
    results = report.analyse(runs, teacher_cfg)
    if paths.exists(paths.join(teacher_dir, "metrics.jsonl")):  # (an imported or Hugging Face teacher has none)
        results["teacher"] = report.teacher_line(report.RunOutputs(teacher_dir), results["methods"])
    meta = {"name": exp.name, "student_preset": exp.student.model.preset,
            "student_params": param_count(exp.student.model), "teacher_preset": teacher_cfg.preset,
            "teacher_params": param_count(teacher_cfg), "teacher_dir": teacher_dir,
            "params_ratio_no_embedding": ((param_count(teacher_cfg) - embedding_params(teacher_cfg))
                                          / (param_count(exp.student.model) - embedding_params(exp.student.model))),
            "batch_size": exp.student.data.batch_size, "seq_len": exp.student.data.seq_len,
            "data": exp.student.data.source if exp.student.data.source != "stdlib"
            else "the Python standard library (built-in corpus)",
            "seeds": ", ".join(map(str, seeds)), "learning_rate": lr, "lr_choice": lr_note,
            "device": getattr(runner, "device", "") or f"{jax.devices()[0].device_kind} x{jax.device_count()}",
            "corpus": _corpus(runs["baseline"]),
            # runs that trained at once share the machine: their times are not comparable (writeup says so)
            "concurrent_runs": bool(getattr(runner, "concurrent", False))}
    results["meta"] = meta
    results["conclusion"] = writeup.conclusion(results)
    if jax.process_index() == 0:
        plots.plot(results, workdir)
        paths.write_json(paths.join(workdir, "results.json"), results)
        paths.write_atomic(paths.join(workdir, "report.md"), writeup.markdown(results, meta))
    return results
