"""The horizon study: the same experiment at 1x, 2x, 4x ... the student's steps, with the teacher fixed.

Reviewers of SALT ask whether its gains vanish with longer training. `experiments`
turns one experiment config into one per horizon: 1x is the experiment itself
(in --workdir), each other horizon an experiment in `<workdir>/horizon-<h>x`
whose students train h times as many steps (n_KD stays the same fraction of
the run) against the 1x experiment's teacher. Each is an ordinary, resumable
experiment, so re-running the command resumes the study where it stopped.
Few-shot scores are taken only at 1x (the held-out loss at every horizon), so
the longer horizons spend their time training.

`summary` reads each horizon's results.json: per horizon, the baseline's and
each method's final loss, the paired (same seed) difference to the baseline,
and the fraction of the steps at which the method reaches the baseline's final
loss; `markdown` and `plot` write horizon.md and horizon.png. `combine` makes
one horizon's results from experiments of it run with other seeds (the study
run seed by seed, possibly on several machines), so the tables and the plot can
be drawn from all its seeds (scripts/horizon_seeds.py).
"""

from __future__ import annotations

import copy
import io

import ml_collections
import numpy as np

from salt_jax import paths
from salt_jax.errors import UserError
from salt_jax.experiment.report import steps_to_reach
from salt_jax.experiment.writeup import paired_values


def parse(spec: str) -> list[int]:
    """"1,2,4" -> [1, 2, 4]: distinct positive multiples, 1 first (the experiment itself holds the teacher)."""
    try:
        horizons = sorted({int(h) for h in spec.split(",") if h.strip()})
    except ValueError:
        raise UserError(f"--horizons={spec}: use comma-separated whole multiples of the student's steps, "
                        "e.g. 1,2,4") from None
    if not horizons or horizons[0] != 1:
        raise UserError(f"--horizons={spec}: must include 1 (the experiment itself, whose teacher every horizon "
                        "shares), e.g. 1,2,4")
    return horizons


def workdir_of(workdir: str, horizon: int) -> str:
    return workdir if horizon == 1 else paths.join(workdir, f"horizon-{horizon}x")


def experiments(exp: ml_collections.ConfigDict, workdir: str,
                horizons: list[int]) -> list[tuple[int, str, ml_collections.ConfigDict]]:
    """(horizon, experiment workdir, experiment config) for each horizon: 1x as given, the others with the
    students' steps multiplied, the 1x teacher (trained or given) fixed, and no few-shot scores."""
    teacher = exp.teacher_path or paths.join(workdir, "teacher")
    out = []
    for h in horizons:
        e = copy.deepcopy(exp)
        if h > 1:
            e.name = f"{exp.name}, {h}x the steps"
            e.teacher_path = teacher
            e.student.train.steps = h * exp.student.train.steps
            e.student.eval.tasks = ""
        out.append((h, workdir_of(workdir, h), e))
    return out


def combine(parts: list[dict], baseline: str = "baseline") -> dict:
    """One horizon's results (results.json's layout, the fields the horizon tables read) from experiments of it
    with disjoint seeds: the same steps, evaluations, teacher and methods. Seeds and per-seed values are
    concatenated; the mean curves and the values at fractions of the run are averaged weighted by seeds; the
    target (the baseline's final loss, over every seed) and each method's reach step on its combined mean
    curve are computed anew, by the reports' rule (salt_jax.experiment.report.steps_to_reach)."""
    first = parts[0]
    if any(p["total_steps"] != first["total_steps"] or set(p["methods"]) != set(first["methods"]) for p in parts):
        raise UserError("horizon: the results to combine differ in steps or methods; combine one horizon's runs")
    seeds = [s for p in parts for s in p["methods"][baseline]["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"horizon: seed {sorted(s for s in seeds if seeds.count(s) > 1)[0]} is in two of the results "
                        "to combine")
    out = {"total_steps": first["total_steps"], "teacher": first.get("teacher"), "methods": {}}
    for name in first["methods"]:
        ms = [p["methods"][name] for p in parts]
        w = np.array([len(m["seeds"]) for m in ms], float)
        mean = lambda key: (np.array([m[key] for m in ms], float).T @ w / w.sum()).tolist()  # noqa: E731
        finals = [v for m in ms for v in m["final_loss_per_seed"]]
        out["methods"][name] = {
            "seeds": [s for m in ms for s in m["seeds"]], "steps": ms[0]["steps"],
            "eval_loss_mean": mean("eval_loss_mean"), "final_loss_per_seed": finals,
            "final_loss_mean": float(np.mean(finals)), "final_loss_std": float(np.std(finals)),
            "kd_phase_end_mean": float(np.average([m["kd_phase_end_mean"] for m in ms], weights=w)),
            "reach_step_per_seed": [s for m in ms for s in m.get("reach_step_per_seed", [None] * len(m["seeds"]))],
            "at_fraction": {k: {"step": v["step"], "loss": float(np.average(
                [m["at_fraction"][k]["loss"] for m in ms], weights=w))} for k, v in ms[0]["at_fraction"].items()}}
    target = out["methods"][baseline]["eval_loss_mean"][-1]  # (its final over every seed, as its curve holds it)
    out["target_loss"] = target
    for m in out["methods"].values():
        m["reach_step"] = steps_to_reach(m["steps"], m["eval_loss_mean"], target)
        m["reach_step_fraction"] = None if m["reach_step"] is None else m["reach_step"] / out["total_steps"]
    return out


def summary(results: dict[int, dict], baseline: str = "baseline") -> list[dict]:
    """One row per (horizon, method) from each horizon's results.json content."""
    rows = []
    for h, r in sorted(results.items()):
        base = r["methods"][baseline]
        for name, m in r["methods"].items():
            if name == baseline:
                continue
            diffs = paired_values(m, base)
            rows.append({"horizon": h, "steps": r["total_steps"], "method": name, "seeds": len(m["seeds"]),
                         "baseline_final": base["final_loss_mean"], "final": m["final_loss_mean"],
                         "paired_diff_mean": float(np.mean(diffs)),
                         "paired_diff_std": float(np.std(diffs)) if len(diffs) > 1 else None,
                         "reach_fraction": m["reach_step_fraction"]})
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# Horizon study: do SALT's gains hold with longer training?", "", f"    {command}", "",
             "The same teacher at every horizon; n_KD is 17.5% of each run. Paired difference = the method's "
             "final held-out loss minus the baseline's, seed by seed (negative: the method is better).", "",
             "| horizon | steps | method | seeds | baseline final | method final | paired difference | "
             "reaches the baseline's final at |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = f" ± {r['paired_diff_std']:.4f}" if r["paired_diff_std"] is not None else ""
        reach = f"{r['reach_fraction']:.0%} of the steps" if r["reach_fraction"] is not None else "not reached"
        lines.append(f"| {r['horizon']}x | {r['steps']} | {r['method']} | {r['seeds']} | {r['baseline_final']:.4f} "
                     f"| {r['final']:.4f} | {r['paired_diff_mean']:+.4f}{spread} | {reach} |")
    return "\n".join(lines + ["", "![horizon](horizon.png)", ""])


def plot(rows: list[dict], out_dir: str) -> str:
    """horizon.png: the paired final-loss difference and the fraction of steps to the baseline's final loss,
    against the horizon, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (d, f) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        x = [r["horizon"] for r in mine]
        d.errorbar(x, [r["paired_diff_mean"] for r in mine], yerr=[r["paired_diff_std"] or 0.0 for r in mine],
                   marker="o", capsize=3, label=method)
        f.plot(x, [r["reach_fraction"] if r["reach_fraction"] is not None else np.nan for r in mine], marker="o",
               label=method)
    d.axhline(0.0, color="gray", ls="--", lw=1)
    d.set_ylabel("final loss - baseline's (paired by seed)")
    f.set_ylabel("fraction of steps to the baseline's final loss")
    f.set_ylim(0, 1.05)
    for ax in (d, f):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("horizon (x the student's steps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = paths.join(out_dir, "horizon.png")
    paths.write_atomic(path, buf.getvalue())
    return path
