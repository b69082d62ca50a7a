"""Every number in the result tables of README.md and docs/results.md is the number of a committed run
(and the docs pages moved out of the README publish no undeclared table).

Each result table is declared below with the results.json it quotes (per row: which report, which method)
and read cell by cell: every number printed must equal, at the printed precision, the value the report
holds for that column (losses, accuracies, reach steps and fractions, paired differences recomputed from the
per-seed finals, times, ratios). A table of either file that is not declared fails the test, so a new
result table cannot be published without its report.
"""

import json
import os
import re

import numpy as np
import pytest

from conftest import REPO

NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?%?")
FRACTIONS = ("25", "50", "70", "100")


def _results(path: str) -> dict:
    return json.load(open(os.path.join(REPO, "docs", path, "results.json")))


def _tables(doc: str) -> list[tuple[int, list[str], list[list[str]]]]:
    """(line number, header cells, body rows' cells) of each markdown table in `doc`."""
    tables, current = [], None
    for i, line in enumerate(open(os.path.join(REPO, doc)), 1):
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = (i, cells, [])
                tables.append(current)
            elif not set("".join(cells)) <= set("-: "):
                current[2].append(cells)
        else:
            current = None
    return tables


def _numbers(text: str) -> list[tuple[float, int, bool]]:
    """(value, decimals, is a percentage) of each number printed in `text` (bold and unicode minus undone)."""
    text = text.replace("−", "-").replace("**", "")
    out = []
    for n in NUMBER.findall(text):
        pct = n.endswith("%")
        digits = n.rstrip("%")
        out.append((float(digits), len(digits.split(".")[1]) if "." in digits else 0, pct))
    return out


def _agrees(printed: tuple[float, int, bool], value) -> bool:
    number, decimals, pct = printed
    if value is None:
        return False
    value = 100 * value if pct else value
    return abs(number - value) <= 0.5 * 10 ** -decimals + 1e-9


def _paired(res: dict, method: str, baseline: str = "baseline") -> list[float]:
    """Per-seed final-loss differences; a report from before results.json kept per-seed finals gives only their
    mean (the difference of the means), so no per-seed value can be quoted from it."""
    m, b = res["methods"][method], res["methods"][baseline]
    if "final_loss_per_seed" not in m:
        return [m["final_loss_mean"] - b["final_loss_mean"]]
    return [s - b for s, b in zip(m["final_loss_per_seed"], b["final_loss_per_seed"])]


def _at(k: str, key: str):
    return lambda res, m: [res["methods"][m]["at_fraction"][k][key]]


def _reach(res, m):
    r = res["methods"][m]
    return [r["reach_step"], r["reach_step_fraction"], r["reach_compute_fraction"]]


def _paired_cell(cell: str, diffs: list[float]) -> list[float]:
    """The order a paired-difference cell prints: `mean ± std (d0, d1, d2)`, `mean (d0, ...)` or `d0, ... (mean m)`."""
    mean, std = float(np.mean(diffs)), float(np.std(diffs))
    if "±" in cell:
        return [mean, std, *diffs]
    if "(mean" in cell:
        return [*diffs, mean]
    return [mean, *diffs] if len(diffs) > 1 else diffs


def _passes_teacher(res, m):
    at = res["teacher"]["passed_at"][m]
    return [at, at / res["total_steps"]]


# Column header (its text up to the first digit or parenthesis, as printed) -> the values its cells print.
# Each function takes (results, method, cell) and returns the expected numbers in the cell's order.
COLUMNS = {
    "held-out loss at 25% / 50% / 70% / 100% of the steps":
        lambda res, m, cell: [res["methods"][m]["at_fraction"][k]["loss"] for k in FRACTIONS],
    "final loss (mean ± std)": lambda res, m, cell: [res["methods"][m]["final_loss_mean"],
                                                     res["methods"][m]["final_loss_std"]],
    "100% (mean ± std)": lambda res, m, cell: [res["methods"][m]["final_loss_mean"],
                                               res["methods"][m]["final_loss_std"]],
    "reached baseline final at": lambda res, m, cell: _reach(res, m),
    "reaches the baseline's final at": lambda res, m, cell: _reach(res, m),
    "reaches baseline final at": lambda res, m, cell: _reach(res, m),
    "train time to reach": lambda res, m, cell: [res["methods"][m]["reach_seconds"],
                                                 res["methods"][m]["reach_time_fraction"]],
    "passes the teacher's final at": lambda res, m, cell: _passes_teacher(res, m),
    "paired difference to the baseline (per seed)": lambda res, m, cell: (
        [] if m == "baseline" else _paired_cell(cell, _paired(res, m))),
    "paired difference to the baseline, per seed": lambda res, m, cell: (
        [] if m == "baseline" else _paired_cell(cell, _paired(res, m))),
    "KD phase end (step)": lambda res, m, cell: [res["methods"][m]["kd_phase_end_mean"]],
    "KD end": lambda res, m, cell: [res["methods"][m]["kd_phase_end_mean"]],
    "reached at step": lambda res, m, cell: [res["methods"][m]["reach_step"]],
    "fraction of steps": lambda res, m, cell: [res["methods"][m]["reach_step_fraction"]],
    "train time (s)": lambda res, m, cell: [res["methods"][m]["reach_seconds"]],
    "fraction of baseline time": lambda res, m, cell: [res["methods"][m]["reach_time_fraction"]],
    "KD/baseline step time": lambda res, m, cell: [res["methods"][m]["kd_step_time_ratio"]],
    "FLOP model": lambda res, m, cell: [res["methods"][m]["flop_model_ratio"]],
    "paired vs baseline": lambda res, m, cell: (
        [0.0] if m == "baseline" else _paired_cell(cell, _paired(res, m))),
    "paired vs salt": lambda res, m, cell: (
        [0.0] if m == "salt" else _paired_cell(cell, _paired(res, m, "salt"))),
    "per seed": lambda res, m, cell: res["methods"][m]["reach_step_per_seed"],
    "compute at reach": lambda res, m, cell: [res["methods"][m]["reach_compute_fraction"]],
}
for _k in FRACTIONS:  # "25% (step 150)": loss / accuracy; "25%": the loss alone
    COLUMNS[f"{_k}%"] = lambda res, m, cell, k=_k: [res["methods"][m]["at_fraction"][k][key]
                                                   for key in ("loss", "accuracy")]


def _horizon(res: dict, column: str, cell: str) -> list:
    """The horizon table: one row per horizon's results.json, baseline and salt side by side."""
    b, s = res["methods"]["baseline"], res["methods"]["salt"]
    return {
        "steps (n_KD)": [res["total_steps"], s["kd_phase_end_mean"]],
        "baseline final": [b["final_loss_mean"]],
        "salt final": [s["final_loss_mean"]],
        "paired difference": _paired(res, "salt"),
        "paired difference, mean ± std (per seed)": [float(np.mean(_paired(res, "salt"))), float(np.std(_paired(res, "salt"))),
                                          *_paired(res, "salt")],
        "seeds": [len(s["seeds"])],
        "salt reaches the baseline's final at": [s["reach_step"], s["reach_step_fraction"]],
        "held-out loss at 25% / 50% / 70%, baseline vs salt":
            [m["at_fraction"][k]["loss"] for k in ("25", "50", "70") for m in (b, s)],
        "passes the teacher's final at, baseline / salt": [res["teacher"]["passed_at"][x] for x in ("baseline", "salt")],
    }[column]


ABLATION_ROWS = {  # (axis, method as printed) -> the method's name in docs/ablations/results.json
    ("baselines", "baseline"): "baseline",
    ("baselines", "baseline, 70% of the steps (own schedule)"): "baseline-train.steps210",
    ("plain SALT", "salt"): "salt",
    **{("n_KD", f"{p}%"): f"salt-kd_fraction{f}" for p, f in (("5", "0.05"), ("10", "0.1"), ("30", "0.3"),
                                                              ("50", "0.5"))},
    ("w0", "0.25"): "salt-kd_weight0.25", ("w0", "0.9"): "salt-kd_weight0.9",
    ("tau", "2"): "salt-temperature2.0",
    ("weight schedule", "linear (w0 -> 0 at n_KD)"): "salt-wlinear",
    ("weight schedule", "cosine"): "salt-wcosine", ("weight schedule", "with_lr"): "salt-wlr",
    ("teacher size", "0.12M teacher (vs 0.23M)"): "salt-teachersmall",
    ("KD for the whole run", "rkd (constant w0)"): "rkd",
    ("KD for the whole run", "with_lr, n_KD = the run"): "salt-wlr-kd_fraction1.0",
    ("teacher logits", "cached top-32, renormalised"): "salt-cached-cache_k32",
    ("teacher logits", 'cached top-32 + "other" bucket'): "salt-cached-cache_targetstopk_other-cache_k32",
    ("teacher logits", "cached, 12 sampled ids"): "salt-cached-cache_targetssampled-cache_k12",
    ("SALT_DS rule", "median over top-10 (paper)"): "salt_ds",
    ("SALT_DS rule", "median over top-1"): "salt_ds-ds_topk1",
    ("SALT_DS rule", "median over top-100"): "salt_ds-ds_topk100",
    ("SALT_DS rule", "teacher loss"): "salt_ds-loss",
    ("SALT_DS rule", "difference (MiniPLM; reference = the 0.12M teacher)"): "salt_ds-difference-ds_referencesmall",
}

# Every result table: (file, line of its header) -> per row label, (report directory under docs/, method).
# The line numbers tie each declaration to one table; a table moved or added fails test_every_table_is_declared.
TABLES = {
    ("README.md", "| method | 25% (step 150)"): {m: ("demo", m) for m in ("baseline", "salt")},
    ("README.md", "| method | 25% | 50% | 70% | 100% (mean ± std)"): {m: ("demo/three-seeds", m)
                                                                     for m in ("baseline", "salt")},
    ("docs/results.md", "| method | held-out loss at 25% / 50% / 70% / 100% of the steps | reached baseline final "
     "(4.2231) at"): {m: ("demo", m) for m in ("baseline", "salt")},
    ("docs/results.md", "| method | held-out loss at 25% / 50% / 70% / 100% of the steps | reached baseline final "
     "(4.1750) at"): {m: ("demo/three-seeds", m) for m in ("baseline", "salt")},
    ("docs/results.md", "| method | held-out loss at 25% / 50% / 70% / 100% of the steps | reached baseline final "
     "(3.6269) at"): {m: ("demo/horizon/2x-seeds12", m) for m in ("baseline", "salt")},
    ("docs/results.md", "| horizon |"): {"1x": ("demo", None), "2x": ("demo/horizon/2x", None),
                                         "4x": ("demo/horizon/4x", None)},
    ("docs/results.md", "| method | held-out loss at 25% / 50% / 70% / 100% of the steps | reached baseline final "
     "(3.1280) at"): {m: ("demo/horizon/4x-seeds12", m) for m in ("baseline", "salt")},
    ("docs/results.md", "| horizon (all seeds) |"): {h: (f"demo/horizon/three-seeds/{h}", None) for h in ("1x", "2x", "4x")},
    ("docs/results.md", "| method | held-out loss at 25% / 50% / 70% / 100% of the steps | reached baseline final "
     "(4.1772) at"): {"baseline": ("demo/cross-tokenizer", "baseline"),
                      "salt, same tokenizer (the demo teacher, BPE 2048)": ("demo/cross-tokenizer", "salt"),
                      "salt, another tokenizer (Unigram 1024 teacher, ALM)":
                          ("demo/cross-tokenizer", "salt-teacherunigram1024-teacher_seq_len160")},
    ("docs/results.md", "| method | held-out loss at 25% / 50% / 70% / 100% of the steps | reached baseline final at"): {
        "baseline, seed 0": ("demo-first-pair", "baseline"), "salt, seed 0": ("demo-first-pair", "salt"),
        "baseline, 3 seeds": ("demo-first-pair/three-seeds", "baseline"),
        "salt, 3 seeds": ("demo-first-pair/three-seeds", "salt")},
    ("docs/results.md", "| method | 25% (step 75)"): {m: ("repro", m) for m in (
        "baseline", "rkd", "salt", "salt-linear", "salt-ratio", "salt_ds", "salt-adaptive", "salt-tokensel")},
    ("docs/results.md", "| method | KD phase end (step)"): {m: ("repro", m) for m in (
        "baseline", "rkd", "salt", "salt-linear", "salt-ratio", "salt_ds", "salt-adaptive", "salt-tokensel")},
    ("docs/results.md", "| axis | method |"): {key: ("ablations", name) for key, name in ABLATION_ROWS.items()},
}
# The summary at the top of docs/results.md: its "what we measured" column quotes the checked tables.
SUMMARY = ("docs/results.md", "| claim | what we measured |")
NOT_RESULTS = {  # tables of these files that quote no run, and why
    SUMMARY: "the state of the evidence: its numbers are quoted from the checked tables (test_the_summary_...)",
    ("README.md", "| command |"): "the commands",
    ("README.md", "| page |"): "the docs site's pages",
    ("docs/commands.md", "| command |"): "the commands",
    ("docs/training.md", "| METHOD |"): "the methods' weight schedules",
    ("docs/models.md", "| preset |"): "the model presets",
}


def _declared(doc: str, header_line: str, table: dict):
    return next(((key, spec) for key, spec in table.items() if key[0] == doc and header_line.startswith(key[1])),
                (None, None))


def _column_name(header: str) -> str:
    """A header cell as COLUMNS keys it: a number in parentheses (the value it names) and bold dropped."""
    return re.sub(r"\s*\((?:[\d.]+|step \d+)\)", "", header.replace("**", "")).strip()


def _header_values(header: str, res: dict) -> list:
    """The numbers a header names: `(4.2231)` the baseline's final, `(4.2451)` the teacher's, `(step 150)`."""
    out = []
    for value in re.findall(r"\(([\d.]+)\)", header):
        out.append(("teacher" if "teacher" in header else "target", value))
    return out


# The files whose every table is declared: README.md, docs/results.md, and the pages that were the README's
# reference (moved to the docs site; none of them may publish a result table without its report).
DECLARED_FILES = ["README.md", "docs/results.md", "docs/commands.md", "docs/training.md", "docs/kd-recipes.md",
                  "docs/hf-teacher.md", "docs/experiments.md", "docs/checkpoints.md", "docs/outputs.md",
                  "docs/data.md", "docs/models.md", "docs/performance-switches.md", "docs/multi-host.md",
                  "docs/faults.md", "docs/layout.md", "docs/index.md"]


@pytest.mark.parametrize("doc", DECLARED_FILES)
def test_every_table_is_declared(doc):
    for line, header, _ in _tables(doc):
        text = "| " + " | ".join(header) + " |"
        key, _ = _declared(doc, text, TABLES)
        other, _ = _declared(doc, text, NOT_RESULTS)
        assert key or other, f"{doc}:{line}: a result table that quotes no declared report: {text[:120]}"


def _checked_rows():
    for (doc, prefix), rows in TABLES.items():
        found = [(line, header, body) for line, header, body in _tables(doc)
                 if ("| " + " | ".join(header) + " |").startswith(prefix)]
        assert len(found) == 1, (doc, prefix, len(found))
        line, header, body = found[0]
        assert len(body) == len(rows), f"{doc}:{line}: {len(body)} rows, {len(rows)} declared"
        yield doc, line, header, body, rows


@pytest.mark.parametrize("doc, prefix", list(TABLES), ids=[f"{d}:{p[:40]}" for d, p in TABLES])
def test_every_number_of_a_result_table_is_its_reports(doc, prefix):
    (found,) = [t for t in _checked_rows() if t[0] == doc and ("| " + " | ".join(t[2]) + " |").startswith(prefix)]
    _, line, header, body, rows = found
    labels = 2 if header[0] == "axis" else 1
    for cells in body:
        plain = [c.replace("**", "") for c in cells[:labels]]
        label = tuple(plain) if labels == 2 else plain[0]
        assert label in rows, f"{doc}:{line}: row {label!r} is not declared"
        report, method = rows[label]
        res = _results(report)
        for name, cell in zip(header[labels:], cells[labels:]):
            column = _column_name(name)
            for kind, value in _header_values(name, res):  # a header's own number: the target or the teacher
                want = res["target_loss"] if kind == "target" else res["teacher"]["final_loss"]
                assert _agrees(_numbers(value)[0], want), f"{doc}:{line}: header {name!r}: the report has {want}"
            if method is None:
                expected = _horizon(res, column, cell)
            else:
                assert column in COLUMNS, f"{doc}:{line}: no rule for column {name!r}"
                expected = COLUMNS[column](res, method, cell)
            if column == "per seed":  # "-, 275, 300": one entry per seed, "-" where that seed never reached it
                entries = [e.strip() for e in cell.split(",")]
                assert len(entries) == len(expected), (doc, line, label, cell, expected)
                for e, want in zip(entries, expected):
                    assert (e == "-" and want is None) or _agrees(_numbers(e)[0], want), (doc, line, label, cell, expected)
                continue
            printed = _numbers(re.sub(r"\(step \d+\)", "", cell) if column.endswith("%") else cell)
            if not printed:  # "-" or "not reached": the report has nothing there
                assert all(v is None for v in expected) or cell in ("-", "0"), (doc, line, label, name, cell, expected)
                continue
            assert len(printed) <= len(expected), (doc, line, label, name, cell, expected)
            for p, want in zip(printed, expected):
                assert _agrees(p, want), (f"{doc}:{line}: row {label!r}, column {name!r}: printed {cell!r}, "
                                          f"the report ({report}/results.json, {method}) has {expected}")


def test_a_changed_number_is_caught(tmp_path, monkeypatch):
    """The check can fail: the first pair's old seed-0 row (4.2153, quoted from a README with no run behind it)
    disagrees with its report."""
    res = _results("demo-first-pair")
    cell = "- / - / - / 4.2153"
    assert not _agrees(_numbers(cell)[0], res["methods"]["salt"]["at_fraction"]["100"]["loss"])
    assert _agrees(_numbers("4.2082")[0], res["methods"]["salt"]["at_fraction"]["100"]["loss"])


def test_the_summary_quotes_only_numbers_of_checked_tables():
    """Each loss, paired difference and percentage in the summary's "what we measured" column is printed, as it
    is there, in one of the checked result tables (so it, too, stands on a report)."""
    printed = set()
    for doc, _, header, body, _ in _checked_rows():
        for cells in [header, *body]:
            for cell in cells:
                printed.update(_numbers(cell))
    (summary,) = [t for t in _tables(SUMMARY[0]) if ("| " + " | ".join(t[1]) + " |").startswith(SUMMARY[1])]
    _, header, body = summary
    column = header.index("what we measured")
    quoted = [n for cells in body for n in _numbers(cells[column]) if n[1] >= 3 or n[2]]
    assert len(quoted) >= 15, quoted
    missing = [n for n in quoted if n not in printed]
    assert not missing, f"numbers of the summary found in no checked table: {missing}"
