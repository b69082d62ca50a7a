"""The experiment's plots (PNG): curves, few-shot scores and the many-method overview.

Pure functions of results.json's content (salt_jax.experiment.report.analyse):
`plot(results, out_dir)` writes loss_vs_step.png and loss_vs_compute.png
(mean over seeds, min-max band), fewshot_vs_step.png when few-shot scores
were taken, and ablation_overview.png for experiments with more than
writeup.OVERVIEW_FROM methods.
"""

from __future__ import annotations

import io

import numpy as np

from salt_jax import paths as paths_  # (`paths` names the list of written plots below)
from salt_jax.experiment import writeup


def plot(results: dict, out_dir: str) -> list[str]:
    """loss_vs_step.png and loss_vs_compute.png (mean over seeds, min-max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for x_key, x_label, fname in (("steps", "training step", "loss_vs_step.png"),
                                  ("compute_baseline_steps", "compute (baseline-step equivalents, teacher included)",
                                   "loss_vs_compute.png")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, m in results["methods"].items():
            x = np.asarray(m[x_key])
            line, = ax.plot(x[1:], m["eval_loss_mean"][1:], marker="o", ms=3, label=name)
            if len(m["seeds"]) > 1:
                ax.fill_between(x[1:], m["eval_loss_min"][1:], m["eval_loss_max"][1:], color=line.get_color(),
                                alpha=0.15)
        ax.axhline(results["target_loss"], color="gray", ls="--", lw=1, label="baseline final")
        if results.get("teacher"):
            ax.axhline(results["teacher"]["final_loss"], color="black", ls=":", lw=1,
                       label=f"teacher final ({results['teacher']['final_loss']:.3f})")
        ax.set_xlabel(x_label)
        ax.set_ylabel("held-out loss (nats/token)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(_save(plt, fig, out_dir, fname))
    if results.get("fewshot"):
        paths.append(_plot_fewshot(plt, results["fewshot"], out_dir))
    if len(results["methods"]) > writeup.OVERVIEW_FROM:
        paths.append(_plot_overview(plt, results, out_dir))
    return paths


def _plot_overview(plt, results: dict, out_dir: str) -> str:
    """ablation_overview.png: per method, the final held-out loss (mean, seed std as error bar), its
    difference to the baseline paired by seed (mean ± std), and the step at which it reaches the
    baseline's final loss (bar: the seed-averaged curve; dots: each seed; hatched: not reached)."""
    names = list(results["methods"])
    ms = [results["methods"][n] for n in names]
    total = results["total_steps"]
    y = np.arange(len(names))[::-1]
    fig, (a, p, b) = plt.subplots(1, 3, figsize=(15, 0.32 * len(names) + 1.6), sharey=True)
    a.barh(y, [m["final_loss_mean"] for m in ms], xerr=[m["final_loss_std"] for m in ms], color="tab:blue",
           alpha=0.7, capsize=2)
    a.axvline(results["target_loss"], color="gray", ls="--", lw=1)
    lo = min(m["final_loss_mean"] - 2 * m["final_loss_std"] for m in ms)
    hi = max(m["final_loss_mean"] + 2 * m["final_loss_std"] for m in ms)
    a.set_xlim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    a.set_xlabel("final held-out loss (mean ± seed std; dashed: baseline)")
    paired = [writeup.paired_values(m, results["methods"]["baseline"]) for m in ms]
    p.barh(y, [np.mean(d) if d else 0.0 for d in paired], xerr=[np.std(d) if d else 0.0 for d in paired],
           color=["tab:green" if d and np.mean(d) < 0 else "tab:red" for d in paired], alpha=0.7, capsize=2)
    p.axvline(0.0, color="gray", lw=1)
    p.set_xlabel("final loss − baseline's, same seed (mean ± std)")
    reach = [m["reach_step"] if m["reach_step"] is not None else total for m in ms]
    bars = b.barh(y, reach, color="tab:green", alpha=0.7)
    for bar, m in zip(bars, ms):
        if m["reach_step"] is None:
            bar.set_hatch("xx")
            bar.set_alpha(0.25)
    for yi, m in zip(y, ms):
        seeds = [s if s is not None else total * 1.03 for s in m.get("reach_step_per_seed", [])]
        b.plot(seeds, [yi] * len(seeds), "k.", ms=4)
    b.axvline(total, color="gray", ls="--", lw=1)
    b.set_xlabel(f"step reaching the baseline's final loss (hatched: not in {total})")
    a.set_yticks(y, names, fontsize=8)
    for ax in (a, p, b):
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _save(plt, fig, out_dir, "ablation_overview.png")


def _save(plt, fig, out_dir: str, name: str) -> str:
    """Writes `fig` as out_dir/name (PNG, atomically) and closes it."""
    path = paths_.join(out_dir, name)
    png = io.BytesIO()
    fig.savefig(png, dpi=110, format="png")
    paths_.write_atomic(path, png.getvalue())
    plt.close(fig)
    return path


def _plot_fewshot(plt, scores: dict, out_dir: str) -> str:
    """fewshot_vs_step.png: one panel per few-shot metric, a line per method."""
    keys = list(scores)
    cols = min(len(keys), 3)
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, m in scores[key]["methods"].items():
            ax.plot(m["steps"], m["mean"], marker="o", ms=3, label=name)
        ax.axhline(scores[key]["target"], color="gray", ls="--", lw=1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(plt, fig, out_dir, "fewshot_vs_step.png")
