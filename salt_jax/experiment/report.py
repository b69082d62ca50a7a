"""Analysis of an experiment's runs: curves, compute, time to the baseline's quality, report.

Pure functions of the runs' outputs (config.json, metrics.jsonl, summary.json,
selection.json), so a report can be rebuilt from any set of workdirs.

Rules (written into the report too):
- Target: the baseline's final held-out loss, averaged over seeds.
- Reached at step s: the first evaluation step from which the method's
  seed-averaged held-out loss stays at or below the target for every later
  evaluation. A curve that dips below and comes back up has not reached it
  until it stays; one that never stays below is "not reached".
- Time: measured seconds in training steps (evaluation and compilation
  excluded), plus, for salt_ds, the wall time of the teacher's scoring pass.
- Compute per step: the student's training step costs 3 * F_S(seq) FLOPs per
  token (forward + backward), the teacher's forward F_T(seq) per token on each
  step where the teacher ran (steps before the KD phase ended), plus, for
  salt_ds, one teacher forward over every scored pool sequence (and one of
  the reference model for ds_rule=difference). F is
  `salt_jax.model.flops.flops_per_token` (matmuls + causal attention). Compute is
  reported in baseline-step equivalents (cumulative FLOPs / baseline FLOPs per
  step). The teacher's own training is not counted (SALT assumes it exists).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import ml_collections
import numpy as np

from salt_jax import paths as storage
from salt_jax.errors import UserError
from salt_jax.renamed import upgrade
from salt_jax.model.flops import flops_per_token, train_flops_per_token
from salt_jax.train.metrics import read_metrics

FRACTIONS = (0.25, 0.5, 0.7, 1.0)


def steps_to_reach(steps: Iterable[int], losses: Iterable[float], target: float) -> int | None:
    """First step from which the loss stays <= target at every later evaluation (None: never)."""
    steps, losses = list(steps), list(losses)
    reached = None
    for s, loss in zip(steps, losses):
        if loss <= target:
            if reached is None:
                reached = s
        else:
            reached = None
    return reached


def compute_curve(steps: Iterable[int], student_step_flops: float, teacher_step_flops: float,
                  kd_phase_end: int, upfront_flops: float = 0.0) -> np.ndarray:
    """Cumulative FLOPs after each of `steps` training steps (teacher ran on steps < kd_phase_end)."""
    s = np.asarray(list(steps), np.float64)
    return upfront_flops + s * student_step_flops + np.minimum(s, kd_phase_end) * teacher_step_flops


class RunOutputs:
    """One finished (or partial) run's outputs."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.config = ml_collections.ConfigDict(upgrade(storage.read_json(storage.join(workdir, "config.json"))))
        records = read_metrics(storage.join(workdir, "metrics.jsonl"))
        self.evals = sorted((r for r in records if r["split"] == "eval"), key=lambda r: r["step"])
        self.fewshot = sorted((r for r in records if r["split"] == "fewshot"), key=lambda r: r["step"])
        self.trains = sorted((r for r in records if r["split"] == "train"), key=lambda r: r["step"])
        steps = int(self.config.train.steps)
        if not self.evals or self.evals[-1]["step"] != steps:
            last = f"its last evaluation is at step {self.evals[-1]['step']} of {steps}" if self.evals else \
                "it holds no evaluation"
            raise UserError(f"{storage.join(workdir, 'metrics.jsonl')}: {last}, so the run is unfinished or the "
                            "file was cut; re-run the experiment command to finish the run")
        self.summary = _load_json(storage.join(workdir, "summary.json")) or {}
        self.selection = _load_json(storage.join(workdir, "selection.json"))
        self.teacher_cache = _load_json(storage.join(workdir, "teacher_cache.json"))  # teacher_logits=cache
        self.teacher_cfg = None  # this run's teacher's model config when it is not the experiment's

    @property
    def kd_phase_end(self) -> int:
        return int(self.summary.get("kd_phase_end", 0))

    def step_flops(self, teacher_cfg) -> tuple[float, float, float]:
        """(student FLOPs per step, teacher forward FLOPs per step, upfront teacher FLOPs for scoring)."""
        c = self.config
        teacher_cfg = self.teacher_cfg or teacher_cfg
        tokens = c.data.batch_size * c.data.seq_len
        student = train_flops_per_token(c.model, c.data.seq_len) * tokens
        if teacher_cfg is None or self.kd_phase_end == 0:
            return student, 0.0, 0.0
        teacher = flops_per_token(teacher_cfg, c.data.seq_len) * tokens
        upfront = 0.0
        if self.selection:  # the scoring pass (and the reference model's, for ds_rule=difference)
            per_token = flops_per_token(teacher_cfg, c.data.seq_len) + self.selection.get("reference_flops_per_token", 0.0)
            upfront = self.selection["pool"] * c.data.seq_len * per_token
        return student, teacher, upfront

    def seconds_per_step(self, kd: bool) -> list[float]:
        """Measured seconds per step of log intervals entirely inside (kd) or outside (not kd) the KD phase."""
        out, prev = [], 0
        for r in self.trains:
            if r.get("steps_per_sec"):
                inside = r["step"] <= self.kd_phase_end
                outside = prev >= self.kd_phase_end
                if (kd and inside) or (not kd and outside):
                    out.append(1.0 / r["steps_per_sec"])
            prev = r["step"]
        return out


def teacher_line(teacher: RunOutputs, methods: dict) -> dict:
    """The teacher as a reference line: its final held-out loss, the tokens it trained on, and for each
    method the step from which its seed-averaged loss stays at or below that line (None: never).

    `methods` is results.json's {name: method_results(...)}. A teacher is only comparable on the student's
    held-out set when it was evaluated on it: same tokenizer and data, which a SALT teacher must share."""
    c = teacher.config
    final = float(teacher.evals[-1]["loss"])
    return {"final_loss": final, "steps": int(c.train.steps),
            "tokens": int(c.train.steps) * int(c.data.batch_size) * int(c.data.seq_len),
            "passed_at": {name: steps_to_reach(m["steps"], m["eval_loss_mean"], final)
                          for name, m in methods.items()}}


def per_corpus(group: list[RunOutputs]) -> dict[str, float]:
    """A mixture's final held-out loss per corpus (metrics.jsonl's `loss/<name>`), the seeds' mean; {} for one
    corpus."""
    names = [k[len("loss/"):] for k in group[0].evals[-1] if k.startswith("loss/")]
    return {n: float(np.mean([r.evals[-1][f"loss/{n}"] for r in group])) for n in names}


def _load_json(path: str):
    return storage.read_json(path) if storage.exists(path) else None


def _at_step(evals: list[dict], step: int) -> dict:
    """The first evaluation at or after `step` (the last one if none)."""
    for r in evals:
        if r["step"] >= step:
            return r
    return evals[-1]


@dataclasses.dataclass(frozen=True)
class Baseline:
    """What every method is compared against: the baseline's run length, final loss (the target), time."""

    total_steps: int
    target_loss: float  # the seeds' mean final held-out loss
    train_seconds: float
    seconds_per_step: float  # median over its timed steps
    step_flops: float  # the student's FLOPs per step

    @classmethod
    def of(cls, group: list[RunOutputs]) -> "Baseline":
        return cls(group[0].config.train.steps, float(np.mean([r.evals[-1]["loss"] for r in group])),
                   float(np.mean([r.evals[-1].get("train_seconds", np.nan) for r in group])),
                   float(np.median(sum((r.seconds_per_step(kd=False) for r in group), []))),
                   group[0].step_flops(None)[0])


def analyse(runs: dict[str, list[RunOutputs]], teacher_cfg, baseline: str = "baseline") -> dict:
    """results.json content from runs grouped by method (each a list over seeds)."""
    if baseline not in runs:
        raise ValueError("the experiment needs a baseline method to compare against")
    base = Baseline.of(runs[baseline])
    return {"total_steps": base.total_steps, "target_loss": base.target_loss,
            "baseline_train_seconds": base.train_seconds, "baseline_seconds_per_step": base.seconds_per_step,
            "methods": {name: method_results(group, teacher_cfg, base) for name, group in runs.items()},
            "fewshot": fewshot(runs, base.total_steps, baseline)}


def _curves(group: list[RunOutputs]) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """(evaluation steps, held-out loss, accuracy and seconds [seed, evaluation]) of one method's seeds.

    The seconds include what a method pays up front: SALT_DS its scoring pass, a cached-logits run its
    cache build."""
    steps = [r["step"] for r in group[0].evals]
    for r in group:
        if [e["step"] for e in r.evals] != steps:
            raise ValueError(f"{r.workdir}: evaluation steps differ from its method's other seeds")
    losses = np.array([[e["loss"] for e in r.evals] for r in group])
    accs = np.array([[e["accuracy"] for e in r.evals] for r in group])
    secs = np.array([[e.get("train_seconds", np.nan) + (r.selection or {}).get("scoring_seconds", 0.0)
                      + (r.teacher_cache or {}).get("build_seconds", 0.0) for e in r.evals] for r in group],
                    np.float64)
    return steps, losses, accs, secs


def _reach(steps: list[int], losses: np.ndarray, secs: np.ndarray, compute: np.ndarray, base: Baseline) -> dict:
    """When the seeds' mean loss first reaches the baseline's final loss: step, seconds, compute, fractions."""
    reach = steps_to_reach(steps, losses.mean(0), base.target_loss)
    idx = steps.index(reach) if reach is not None else None
    seconds = float(np.nanmean(secs[:, idx])) if idx is not None else None
    return {"reach_step": reach,
            "reach_step_per_seed": [steps_to_reach(steps, row, base.target_loss) for row in losses],
            "reach_step_fraction": reach / base.total_steps if reach is not None else None,
            "reach_seconds": seconds,
            "reach_time_fraction": seconds / base.train_seconds if idx is not None else None,
            "reach_compute_fraction": float(compute[idx] / base.total_steps) if idx is not None else None}


def _at_fractions(group: list[RunOutputs], total_steps: int) -> dict:
    """{"10": {"step", "loss", "accuracy"}, ...}: the seeds' mean at each fraction of the run (FRACTIONS)."""
    out = {}
    for f in FRACTIONS:
        at = [_at_step(r.evals, int(round(f * total_steps))) for r in group]
        out[f"{int(f * 100)}"] = {"step": at[0]["step"], "loss": float(np.mean([a["loss"] for a in at])),
                                  "accuracy": float(np.mean([a["accuracy"] for a in at]))}
    return out


def method_results(group: list[RunOutputs], teacher_cfg, base: Baseline) -> dict:
    """One method's entry of results.json: its curves over seeds, final loss, and cost to the baseline's."""
    steps, losses, accs, secs = _curves(group)
    mean = losses.mean(0)
    flops = [r.step_flops(teacher_cfg) for r in group]  # (student, teacher, upfront) per run
    stud, teach, _ = flops[0]
    compute = np.mean([compute_curve(steps, s_f, t_f, r.kd_phase_end, up) for r, (s_f, t_f, up)
                       in zip(group, flops)], axis=0) / base.step_flops
    kd_end = int(round(np.mean([r.kd_phase_end for r in group])))
    kd_secs = sum((r.seconds_per_step(kd=True) for r in group), []) if kd_end > 0 else []
    return {"seeds": [int(r.config.seed) for r in group], "workdirs": [r.workdir for r in group],
            "steps": steps, "eval_loss_mean": mean.tolist(), "eval_loss_min": losses.min(0).tolist(),
            "eval_loss_max": losses.max(0).tolist(), "eval_accuracy_mean": accs.mean(0).tolist(),
            "train_seconds_mean": np.nanmean(secs, 0).tolist(), "compute_baseline_steps": compute.tolist(),
            "final_loss_mean": float(mean[-1]), "final_loss_std": float(losses[:, -1].std()),
            "final_loss_per_seed": losses[:, -1].tolist(), "final_accuracy_mean": float(accs[:, -1].mean()),
            "final_loss_per_corpus": per_corpus(group), "kd_phase_end_mean": kd_end,
            "at_fraction": _at_fractions(group, base.total_steps),
            **_reach(steps, losses, secs, compute, base),
            "kd_seconds_per_step": float(np.median(kd_secs)) if kd_secs else None,
            "kd_step_time_ratio": float(np.median(kd_secs) / base.seconds_per_step) if kd_secs else None,
            "flop_model_ratio": float(1 + teach / stud) if teach else None}


# Standard errors go beside their scores; word / byte perplexity are 2 ** bits_per_byte in other units.
_NOT_REPORTED = ("_stderr", "/word_perplexity", "/byte_perplexity")


def lower_is_better(metric: str) -> bool:
    """Perplexities, bits per byte and the in-context-learning probe's loss differences (icl_probe/induction,
    icl_probe/slope: more negative = more use of the context) fall as a model improves; accuracies and exact
    match rise."""
    return "perplexity" in metric or "bits_per_byte" in metric or metric.startswith("icl_probe/")


def _measured_at(group: list[RunOutputs], step: int, key: str) -> float | None:
    """The seeds' mean score `key` evaluated at exactly `step`; None where it was not measured there (a
    fraction's column then shows "-", never a score from another step)."""
    found = [e for r in group for e in r.fewshot if e["step"] == step]
    return float(np.mean([e[key] for e in found])) if len(found) == len(group) else None


def fewshot(runs: dict[str, list[RunOutputs]], total_steps: int, baseline: str = "baseline") -> dict | None:
    """Few-shot scores (config.eval) per metric and method: the seed mean at each evaluation, at the loss
    table's fractions, and the step from which the method stays at or past the baseline's final score
    (the loss rule, with the direction of each metric). None when the runs have no few-shot records."""
    if not all(r.fewshot for group in runs.values() for r in group):
        return None
    final = runs[baseline][0].fewshot[-1]
    keys = [k for k in final if "/" in k and not k.endswith(_NOT_REPORTED) and isinstance(final[k], (int, float))]
    out: dict = {}
    for key in keys:
        lower = lower_is_better(key)
        target = float(np.mean([r.fewshot[-1][key] for r in runs[baseline]]))
        per_method = {}
        for name, group in runs.items():
            steps = [r["step"] for r in group[0].fewshot]
            if any([e["step"] for e in r.fewshot] != steps for r in group):
                raise ValueError(f"{group[0].workdir}: few-shot evaluation steps differ between seeds")
            values = np.array([[e[key] for e in r.fewshot] for r in group]).mean(0)
            signed = values if lower else -values
            reach = steps_to_reach(steps, signed, target if lower else -target)
            per_method[name] = {
                "steps": steps, "mean": values.tolist(),
                "final": float(values[-1]),
                "final_stderr": float(np.mean([r.fewshot[-1].get(f"{key}_stderr", np.nan) for r in group])),
                "at_fraction": {f"{int(f * 100)}": _measured_at(group, int(round(f * total_steps)), key)
                                for f in FRACTIONS},
                "reach_step": reach,
            }
        base = per_method[baseline]
        moved = abs(base["final"] - base["mean"][0])  # the baseline's own gain over its run
        noise = 2 * base["final_stderr"]
        out[key] = {"target": target, "lower_is_better": lower, "methods": per_method,
                    "signal": bool(moved > noise) if np.isfinite(noise) else bool(moved > 0)}
    return out
