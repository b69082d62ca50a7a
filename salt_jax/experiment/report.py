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

from typing import Iterable

import ml_collections
import numpy as np

from salt_jax import paths as storage
from salt_jax.renamed import upgrade
from salt_jax.errors import UserError
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


def analyse(runs: dict[str, list[RunOutputs]], teacher_cfg, baseline: str = "baseline") -> dict:
    """results.json content from runs grouped by method (each a list over seeds)."""
    if baseline not in runs:
        raise ValueError("the experiment needs a baseline method to compare against")
    base_runs = runs[baseline]
    total_steps = base_runs[0].config.train.steps
    target = float(np.mean([r.evals[-1]["loss"] for r in base_runs]))
    base_seconds = float(np.mean([r.evals[-1].get("train_seconds", np.nan) for r in base_runs]))
    base_step_s = float(np.median(sum((r.seconds_per_step(kd=False) for r in base_runs), [])))
    out = {"total_steps": total_steps, "target_loss": target, "baseline_train_seconds": base_seconds,
           "baseline_seconds_per_step": base_step_s, "methods": {}}
    for name, group in runs.items():
        steps = [r["step"] for r in group[0].evals]
        for r in group:
            if [e["step"] for e in r.evals] != steps:
                raise ValueError(f"{r.workdir}: evaluation steps differ from its method's other seeds")
        losses = np.array([[e["loss"] for e in r.evals] for r in group])
        accs = np.array([[e["accuracy"] for e in r.evals] for r in group])
        # salt_ds pays its scoring pass up front, a cached-logits run its cache build: add them to the time
        secs = np.array([[e.get("train_seconds", np.nan) + (r.selection or {}).get("scoring_seconds", 0.0)
                          + (r.teacher_cache or {}).get("build_seconds", 0.0) for e in r.evals] for r in group],
                        np.float64)
        mean = losses.mean(0)
        flops = [r.step_flops(teacher_cfg) for r in group]  # (student, teacher, upfront) per run
        stud, teach, _ = flops[0]
        kd_end = int(round(np.mean([r.kd_phase_end for r in group])))
        base_flops = base_runs[0].step_flops(None)[0]
        compute = np.mean([compute_curve(steps, s_f, t_f, r.kd_phase_end, up) for r, (s_f, t_f, up)
                           in zip(group, flops)], axis=0) / base_flops
        reach = steps_to_reach(steps, mean, target)
        idx = steps.index(reach) if reach is not None else None
        kd_secs = sum((r.seconds_per_step(kd=True) for r in group), []) if kd_end > 0 else []
        m = {
            "seeds": [int(r.config.seed) for r in group],
            "workdirs": [r.workdir for r in group],
            "steps": steps,
            "eval_loss_mean": mean.tolist(),
            "eval_loss_min": losses.min(0).tolist(),
            "eval_loss_max": losses.max(0).tolist(),
            "eval_accuracy_mean": accs.mean(0).tolist(),
            "train_seconds_mean": np.nanmean(secs, 0).tolist(),
            "compute_baseline_steps": compute.tolist(),
            "final_loss_mean": float(mean[-1]),
            "final_loss_std": float(losses[:, -1].std()),
            "final_loss_per_seed": losses[:, -1].tolist(),
            "final_accuracy_mean": float(accs[:, -1].mean()),
            "final_loss_per_corpus": per_corpus(group),
            "kd_phase_end_mean": kd_end,
            "at_fraction": {},
            "reach_step": reach,
            "reach_step_per_seed": [steps_to_reach(steps, row, target) for row in losses],
            "reach_step_fraction": reach / total_steps if reach is not None else None,
            "reach_seconds": float(np.nanmean(secs[:, idx])) if idx is not None else None,
            "reach_time_fraction": float(np.nanmean(secs[:, idx]) / base_seconds) if idx is not None else None,
            "reach_compute_fraction": float(compute[idx] / total_steps) if idx is not None else None,
            "kd_seconds_per_step": float(np.median(kd_secs)) if kd_secs else None,
            "kd_step_time_ratio": float(np.median(kd_secs) / base_step_s) if kd_secs else None,
            "flop_model_ratio": float(1 + teach / stud) if teach else None,
        }
        for f in FRACTIONS:
            at = [_at_step(r.evals, int(round(f * total_steps))) for r in group]
            m["at_fraction"][f"{int(f * 100)}"] = {"step": at[0]["step"],
                                                   "loss": float(np.mean([a["loss"] for a in at])),
                                                   "accuracy": float(np.mean([a["accuracy"] for a in at]))}
        out["methods"][name] = m
    out["fewshot"] = fewshot(runs, total_steps, baseline)
    return out


# Standard errors go beside their scores; word / byte perplexity are 2 ** bits_per_byte in other units.
_NOT_REPORTED = ("_stderr", "/word_perplexity", "/byte_perplexity")


def _num(x: float) -> str:
    return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.4g}"


def lower_is_better(metric: str) -> bool:
    """Perplexities and bits per byte fall as a model improves; accuracies and exact match rise."""
    return "perplexity" in metric or "bits_per_byte" in metric


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


def fewshot_conclusion(results: dict, baseline: str = "baseline") -> str:
    """One paragraph on the few-shot scores: where the baseline's own score moved beyond its standard
    error (signal), who leads at each fraction and when each method reaches the baseline's final;
    the metrics without signal are named as such."""
    scores = results.get("fewshot")
    if not scores:
        return ""
    parts, flat = [], []
    for key, entry in scores.items():
        if not entry["signal"]:
            flat.append(key)
            continue
        for name, m in entry["methods"].items():
            if name == baseline:
                continue
            b = entry["methods"][baseline]
            measured = [f for f in ("25", "50", "70", "100")
                        if m["at_fraction"][f] is not None and b["at_fraction"][f] is not None]
            better = [(m["at_fraction"][f] < b["at_fraction"][f]) if entry["lower_is_better"]
                      else (m["at_fraction"][f] > b["at_fraction"][f]) for f in measured]
            of = "" if len(measured) == 4 else " measured"  # (a fraction's step not evaluated is not compared)
            lead = ("not evaluated at the table's fractions" if not better else f"ahead at every fraction{of}"
                    if all(better) else f"behind at every fraction{of}"
                    if not any(better) else f"ahead at {sum(better)} of {len(better)} fractions{of}")
            reach = (f"reaches the baseline's final {b['final']:.4f} at step {m['reach_step']}"
                     if m["reach_step"] is not None else f"does not reach the baseline's final {b['final']:.4f}")
            two_se = 2 * b["final_stderr"]
            noise = (f"; the final difference is within noise (2 s.e. = {two_se:.3f})"
                     if np.isfinite(two_se) and abs(m["final"] - b["final"]) < two_se else "")
            parts.append(f"on {key} {name} is {lead} ({_num(m['final'])} vs {_num(b['final'])} at the end) and "
                         f"{reach}{noise}")
    text = "Few-shot: " + ("; ".join(parts) + "." if parts else "no metric moved beyond its standard error.")
    if flat:
        text += (f" No signal at this scale on {', '.join(flat)}: the baseline's own final score is within two "
                 "standard errors of its score at step 0 (untrained), so these cannot separate the methods here.")
    return text


def conclusion(results: dict, baseline: str = "baseline") -> str:
    """One plain paragraph: did the paper's headline (baseline quality in ~70% of steps) reproduce?"""
    salt_like = {k: v for k, v in results["methods"].items() if k != baseline}
    if not salt_like:
        return "Only the baseline was run; there is nothing to compare."
    parts = []
    for name, m in salt_like.items():
        if m["reach_step"] is None:
            parts.append(f"{name} did not reach the baseline's final held-out loss "
                         f"({results['target_loss']:.4f}) within the run (final {m['final_loss_mean']:.4f})")
        else:
            time_part = (f" and {m['reach_time_fraction']:.0%} of its training time"
                         if m["reach_time_fraction"] is not None else "")
            parts.append(f"{name} reached it at step {m['reach_step']} ({m['reach_step_fraction']:.0%} of the "
                         f"baseline's steps{time_part})")
    reached = [m for m in salt_like.values() if m["reach_step_fraction"] is not None]
    best = min(reached, key=lambda m: m["reach_step_fraction"], default=None)
    if best is None:
        verdict = "The paper's headline (baseline quality in ~70% of the steps) did not reproduce at this scale."
    elif best["reach_step_fraction"] >= 1.0:
        verdict = "No method reached the baseline's quality before the baseline itself did."
    else:
        steps_part = (f"in {best['reach_step_fraction']:.0%} of the steps"
                      f" ({best['reach_compute_fraction']:.0%} of the baseline's compute, teacher included)")
        time_fraction = best["reach_time_fraction"]
        if time_fraction is None or time_fraction >= 1.0:
            time_part = "but without a measured wall-clock saving"
        else:
            time_part = f"and in {time_fraction:.0%} of its measured training time"
        size = ("roughly the paper's size (~70% of the steps, ~72% of the time)"
                if best["reach_step_fraction"] <= 0.8 and time_fraction is not None and time_fraction <= 0.85
                else "a smaller saving than the paper's (~70% of the steps, ~72% of the time)")
        verdict = (f"The paper's headline reproduced in direction: the best method reached baseline quality "
                   f"{steps_part} {time_part}; that is {size}.")
    return "; ".join(parts) + ". " + verdict


def _fmt(x, pattern="{:.4f}", none="not reached"):
    return none if x is None else pattern.format(x)


def markdown(results: dict, meta: dict) -> str:
    """report.md: setup, fairness rules, tables, plots and the conclusion."""
    lines = [f"# SALT experiment: {meta['name']}", ""]
    lines += [f"Student {meta['student_preset']} ({meta['student_params']:,} parameters), teacher "
              f"{meta['teacher_preset']} ({meta['teacher_params']:,} parameters, from {meta['teacher_dir']}); "
              f"{results['total_steps']} steps of batch {meta['batch_size']} x {meta['seq_len']} tokens on "
              f"{meta['data']}; seeds {meta['seeds']}; device {meta['device']}.", "",
              f"Corpus: {meta.get('corpus', 'not recorded')}.", ""]
    lines += ["## Fairness rules", "",
              "- Baseline and students share every hyper-parameter (model, data order per seed, optimizer, "
              "schedule, steps, evaluation set) except the KD settings.",
              f"- Learning rate {meta['learning_rate']:g}: {meta['lr_choice']}",
              "- Held-out data (files whose path hash falls in the held-out fraction) is never trained on; "
              "evaluation uses the same fixed held-out batches for every run.",
              "- Reached = the first evaluation from which the seed-averaged held-out loss stays at or below the "
              "baseline's final held-out loss for the rest of the run.",
              "- Compute counts the student step (3 x forward FLOPs) and the teacher forward on every KD-phase "
              "step (and, for salt_ds, over the scored pool); the teacher's own training is not counted.", ""]
    lines += ["## Held-out loss / accuracy at fractions of the run", "",
              "| method | " + " | ".join(f"{k}% (step {results['methods']['baseline']['at_fraction'][k]['step']})"
                                       for k in ("25", "50", "70", "100")) + " |",
              "|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        cells = [f"{m['at_fraction'][k]['loss']:.4f} / {m['at_fraction'][k]['accuracy']:.3f}"
                 for k in ("25", "50", "70", "100")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"## Time to the baseline's final held-out loss ({results['target_loss']:.4f})", "",
              "| method | KD phase end (step) | reached at step | fraction of steps | train time (s) | "
              "fraction of baseline time | final loss (mean ± std) | KD/baseline step time | FLOP model |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        lines.append(
            f"| {name} | {m['kd_phase_end_mean']} | {_fmt(m['reach_step'], '{}')} | "
            f"{_fmt(m['reach_step_fraction'], '{:.0%}', '-')} | {_fmt(m['reach_seconds'], '{:.0f}', '-')} | "
            f"{_fmt(m['reach_time_fraction'], '{:.0%}', '-')} | {m['final_loss_mean']:.4f} ± {m['final_loss_std']:.4f} | "
            f"{_fmt(m['kd_step_time_ratio'], '{:.3f}', '-')} | {_fmt(m['flop_model_ratio'], '{:.3f}', '-')} |")
    lines += ["", "KD/baseline step time is the median measured seconds per step of log intervals wholly inside "
              "the KD phase over the baseline run's median (different processes; `python -m salt_jax.bench` "
              "measures it in one process). The FLOP model is 1 + F_T / (3 F_S).", "",
              *_corpus_markdown(results),
              *_fewshot_markdown(results),
              *_overview_markdown(results),
              "## Curves", "", "![held-out loss vs step](loss_vs_step.png)", "",
              "![held-out loss vs compute](loss_vs_compute.png)", "", "## Conclusion", "",
              conclusion(results), "", *([fewshot_conclusion(results), ""] if results.get("fewshot") else [])]
    return "\n".join(lines)


OVERVIEW_FROM = 4  # experiments with more methods than this get ablation_overview.png and its table


def _overview_markdown(results: dict) -> list[str]:
    """Per-seed steps to the baseline's final loss, and the overview plot (experiments with many methods)."""
    if len(results["methods"]) <= OVERVIEW_FROM:
        return []
    lines = ["## Per-seed steps to the baseline's final loss", "",
             "Each seed's own curve against the seed-averaged baseline target (\"-\": not reached); the "
             "seed-averaged column is the table above's.", "",
             "| method | seed-averaged | per seed | final loss (mean ± std) | Δ vs baseline | paired Δ (mean ± std) |",
             "|---|---|---|---|---|---|"]
    baseline = results["methods"]["baseline"]
    for name, m in results["methods"].items():
        per = ", ".join(_fmt(s, "{}", "-") for s in m.get("reach_step_per_seed", []))
        lines.append(f"| {name} | {_fmt(m['reach_step'], '{}', '-')} | {per} | {m['final_loss_mean']:.4f} ± "
                     f"{m['final_loss_std']:.4f} | {m['final_loss_mean'] - baseline['final_loss_mean']:+.4f} | "
                     f"{_paired(m, baseline)} |")
    lines += ["", "Paired Δ: the method's final loss minus the baseline's of the same seed (same data order and "
              "initialisation), mean ± std over seeds; it removes the seed-to-seed spread both share."]
    return lines + ["", "![ablation overview](ablation_overview.png)", ""]


def paired_values(m: dict, baseline: dict) -> list[float]:
    """The method's final loss minus the baseline's, for each seed both ran."""
    base = dict(zip(baseline.get("seeds", []), baseline.get("final_loss_per_seed", [])))
    return [x - base[s] for s, x in zip(m.get("seeds", []), m.get("final_loss_per_seed", [])) if s in base]


def _paired(m: dict, baseline: dict) -> str:
    """Final-loss difference to the baseline paired by seed: 'mean ± std', or '-' without common seeds."""
    diffs = paired_values(m, baseline)
    return f"{np.mean(diffs):+.4f} ± {np.std(diffs):.4f}" if diffs else "-"


def _corpus_markdown(results: dict) -> list[str]:
    """A mixture's final held-out loss per corpus and method (none for a single corpus)."""
    names = list(next(iter(results["methods"].values())).get("final_loss_per_corpus") or {})
    if not names:
        return []
    lines = ["## Final held-out loss per corpus of the mixture", "",
             "Each corpus's own held-out split (config.data.heldout_batches batches of it); overall = the corpora's "
             "losses weighted by the mixture's weights.", "",
             "| method | overall | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for name, m in results["methods"].items():
        cells = [_fmt(m.get("final_loss_per_corpus", {}).get(n), "{:.4f}", "-") for n in names]
        lines.append(f"| {name} | {m['final_loss_mean']:.4f} | " + " | ".join(cells) + " |")
    return lines + [""]


def _fewshot_markdown(results: dict) -> list[str]:
    """The few-shot section: scores at the loss table's fractions and when each reaches the baseline's."""
    scores = results.get("fewshot")
    if not scores:
        return []
    fractions = ("25", "50", "70", "100")
    lines = ["## Few-shot scores (lm-evaluation-harness)", "",
             "Scored during training (config.eval) on the offline tasks of salt_jax/eval/tasks (held-out "
             "standard-library files; docs/evaluation.md). ± is lm-eval's standard error of the final score "
             "over the task's documents: differences smaller than about twice it are noise. Reached = the first "
             "evaluation from which the seed-averaged score stays at or past the baseline's final score.", "",
             "| task / metric | method | " + " | ".join(f"{f}%" for f in fractions) + " | final ± s.e. | "
             "reaches the baseline's final at step |",
             "|---|---|" + "---|" * (len(fractions) + 2)]
    for key, entry in scores.items():
        arrow = "lower is better" if entry["lower_is_better"] else "higher is better"
        for name, m in entry["methods"].items():
            cells = [_fmt(m["at_fraction"][f], "{:.4f}", "-") for f in fractions]
            stderr = f" ± {m['final_stderr']:.4f}" if np.isfinite(m["final_stderr"]) else ""
            reach = _fmt(m["reach_step"], "{}") if entry["signal"] else "no signal"
            lines.append(f"| {key} ({arrow}) | {name} | " + " | ".join(cells) + f" | {_num(m['final'])}{stderr} | "
                         f"{reach} |")
    lines += ["", "No signal = the baseline's own final score is within two standard errors of its score at "
              "step 0 (untrained); the reach rule is then noise.", "",
              fewshot_conclusion(results), "", "![few-shot scores vs step](fewshot_vs_step.png)", ""]
    return lines
