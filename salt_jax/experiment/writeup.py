"""The report's words: the conclusion lines and report.md, from results.json's content (salt_jax.experiment.report).

Pure functions of the numbers `report.analyse` computed: what a reader sees
first (`conclusion`), the few-shot reading, and the markdown tables.
"""

from __future__ import annotations

import numpy as np

from salt_jax.experiment.report import lower_is_better


def _num(x: float) -> str:
    return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.4g}"


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
    shared = shared_machine(results)
    parts = []
    for name, m in salt_like.items():
        if m["reach_step"] is None:
            parts.append(f"{name} did not reach the baseline's final held-out loss "
                         f"({results['target_loss']:.4f}) within the run (final {m['final_loss_mean']:.4f})")
        else:
            time_part = (f" and {m['reach_time_fraction']:.0%} of its training time"
                         if m["reach_time_fraction"] is not None and not shared else "")
            parts.append(f"{name} reached the baseline's final held-out loss ({results['target_loss']:.4f}) at "
                         f"step {m['reach_step']} ({m['reach_step_fraction']:.0%} of the baseline's steps{time_part})")
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
        if shared:
            time_part = "(no wall-clock figure: the runs trained side by side, sharing the machine)"
            time_fraction = None
        elif time_fraction is None or time_fraction >= 1.0:
            time_part = "but without a measured wall-clock saving"
        else:
            time_part = f"and in {time_fraction:.0%} of its measured training time"
        size = ("roughly the paper's size (~70% of the steps, ~72% of the time)"
                if best["reach_step_fraction"] <= 0.8 and time_fraction is not None and time_fraction <= 0.85
                else "a smaller saving than the paper's (~70% of the steps, ~72% of the time)")
        verdict = (f"The paper's headline reproduced in direction: the best method reached baseline quality "
                   f"{steps_part} {time_part}; that is {size}.")
    return "; ".join(parts) + ". " + verdict


def shared_machine(results: dict) -> bool:
    """Whether the runs trained side by side (experiment --engine=ray): their measured times then include
    each other's load, so time fractions and step-time ratios are not comparable between methods."""
    return bool(results.get("meta", {}).get("concurrent_runs"))


SHARED_MACHINE_NOTE = ("**The runs trained side by side** (`--engine=ray`), sharing the machine's cores: the train "
                       "time, time fraction and KD/baseline step-time columns include each other's load and are not "
                       "comparable between methods. Steps, losses and compute are unaffected; run the experiment "
                       "with `--engine=local` (or one run per machine) to compare times.")


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
              *([SHARED_MACHINE_NOTE, ""] if shared_machine(results) else []),
              *_teacher_markdown(results, meta),
              *_corpus_markdown(results),
              *_fewshot_markdown(results),
              *_overview_markdown(results),
              "## Curves", "", "![held-out loss vs step](loss_vs_step.png)", "",
              "![held-out loss vs compute](loss_vs_compute.png)", "", "## Conclusion", "",
              conclusion(results), "", *([fewshot_conclusion(results), ""] if results.get("fewshot") else [])]
    return "\n".join(lines)


def _teacher_markdown(results: dict, meta: dict) -> list[str]:
    """The teacher as a reference: its size and tokens against the student's, its final loss, and the step at
    which each method's loss passes it for good."""
    t = results.get("teacher")
    if not t:
        return []
    student_tokens = results["total_steps"] * meta["batch_size"] * meta["seq_len"]
    lines = ["## The teacher as a reference", "",
             f"Teacher: {meta['teacher_params'] / meta['student_params']:.2f}x the student's parameters "
             f"({meta.get('params_ratio_no_embedding', float('nan')):.2f}x without embeddings), trained "
             f"{t['steps']} steps on {t['tokens']:,} tokens ({t['tokens'] / student_tokens:.2f}x the student's "
             f"run); final held-out loss {t['final_loss']:.4f} (the dotted line on the loss plots).", "",
             "| method | passes the teacher's final loss at step | fraction of steps |", "|---|---|---|"]
    for name, step in t["passed_at"].items():
        lines.append(f"| {name} | {_fmt(step, '{}')} | "
                     f"{_fmt(step / results['total_steps'] if step is not None else None, '{:.0%}', '-')} |")
    return lines + [""]


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
             "standard-library files; docs/evaluation.md) and, when named, icl_probe (the in-context-learning "
             "probe on the run's held-out windows: loss differences in nats/token, lower is better). ± is the "
             "standard error of the final score over the task's documents (lm-eval's; icl_probe's over its "
             "windows): differences smaller than about twice it are noise. Reached = the first "
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
