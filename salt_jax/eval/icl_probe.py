"""An in-context-learning probe on held-out token windows: the induction score and the in-context slope.

Goyal et al. 2025 ("Distilled Pretraining", arXiv 2509.01649) find that distillation during pre-training
improves test-time scaling but weakens in-context learning and induction heads (Olsson et al. 2022, "In-context
Learning and Induction Heads", arXiv 2209.11895). SALT distils only early; this probe measures what is left
at any step, on the run's own held-out split, with the model's own forward (`Engine.token_logprobs`: the
per-position log-probabilities the few-shot scores sum). Both numbers are losses in nats per token; lower
(more negative) is better.

Construction (deterministic: numpy's default_rng(seed), the same windows at every step). T = seq_len.
- Windows: `count` rows of T + 1 held-out tokens (T targets; target t is token t + 1 predicted from
  tokens 0..t), drawn without replacement (every row when the split has fewer).
- induction: each window gets a span of L = min(32, T // 4) tokens, read at a random offset of another
  random held-out row, written over the window at row positions a .. a+L-1 (a = T // 4, the first
  occurrence) and b .. b+L-1 (b = a + T // 2, the repeat). Scored: the targets that are span tokens 1..L-1
  of an occurrence (target indices a .. a+L-2 and b .. b+L-2); span token 0 follows unrelated text, so
  nothing in the context says it comes. Score = mean loss over the repeat's scored targets minus over the
  first occurrence's (every window's pooled). 0: no use of the first occurrence; a perfect copier has loss 0
  on the repeat, so the extreme is minus the first occurrence's mean loss.
- slope: on the same windows as they are (nothing planted), mean loss over targets T - T//4 .. T-1 minus
  over targets 0 .. T//4 - 1. Negative: later tokens, with more context, are predicted better.
Standard errors: over windows, of each window's own difference (std / sqrt(windows)).

This is not an lm-eval task: lm-eval's requests return one log-likelihood per (context, continuation) of
text, while both numbers are means over token positions of token windows from the run's own store (no
text round trip through the tokenizer), so the few-shot hook and `python -m salt_jax.eval` score it
beside lm-eval's tasks, under the same name scheme ("icl_probe/induction").
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from salt_jax.errors import UserError

NAME = "icl_probe"  # the task name in config.eval.tasks and --tasks
WINDOWS = 64  # held-out windows scored (config.eval.limit / --limit, a count, overrides)
SPAN = 32  # the planted span's length at most (T // 4 below 128 tokens)
MIN_SEQ_LEN = 8  # T // 4 >= 2: a span of 2 tokens, one of them scored

# log p [b, t] of targets where weights is 1: Engine.token_logprobs, or a stand-in (tests)
LogProbs = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def split_names(names: list[str]) -> tuple[list[str], list[str]]:
    """(the probe's names, lm-eval's names) of a task list."""
    return [n for n in names if n == NAME], [n for n in names if n != NAME]


def check(seq_len: int, field: str) -> None:
    """The probe needs windows of MIN_SEQ_LEN tokens at least."""
    if seq_len < MIN_SEQ_LEN:
        raise UserError(f"{field}: {NAME} needs windows of at least {MIN_SEQ_LEN} tokens, and seq_len is {seq_len}; "
                        f"raise config.data.seq_len or leave {NAME} out")


def layout(seq_len: int) -> tuple[int, int, int]:
    """(L, a, b): the span's length and the row positions of its first occurrence and of its repeat."""
    quarter = seq_len // 4
    return min(SPAN, quarter), quarter, quarter + seq_len // 2


@dataclasses.dataclass(frozen=True)
class Windows:
    """The probe's held-out windows: `plain` [n, T + 1] as read, `planted` the same with the span twice."""

    plain: np.ndarray
    planted: np.ndarray

    @property
    def seq_len(self) -> int:
        return self.plain.shape[1] - 1


def windows(split, seed: int, count: int = WINDOWS) -> Windows:
    """The windows of a held-out split (a TokenSplit: n_rows, seq_len, rows(idx)), a pure function of
    (split, seed, count)."""
    T = split.seq_len
    check(T, "config.data.seq_len")
    n_rows = split.n_rows
    if n_rows < 1:
        raise UserError(f"config.data: the held-out split has fewer tokens than one window of {T}; "
                        "raise config.data.heldout_fraction or lower config.data.seq_len")
    rng = np.random.default_rng(seed)
    idx = rng.choice(n_rows, size=min(count, n_rows), replace=False)
    src = rng.integers(0, max(n_rows - 1, 1), size=len(idx))
    src = src + (src >= idx) if n_rows > 1 else idx  # another row than the window's own
    L, a, b = layout(T)
    offsets = rng.integers(0, T + 1 - L + 1, size=len(idx))
    plain, donors = split.rows(idx), split.rows(src)
    planted = plain.copy()
    for i, off in enumerate(offsets):
        planted[i, a:a + L] = planted[i, b:b + L] = donors[i, off:off + L]
    return Windows(plain, planted)


def token_losses(logprobs: LogProbs, rows: np.ndarray, pad_id: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(loss [n, T], weights [n, T]): -log p of each next token of `rows` [n, T + 1], `batch` rows per call;
    weights 0 where the target is padding (as the held-out loss masks it)."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    weights = (targets != pad_id).astype(np.float32)
    loss = np.concatenate([-np.asarray(logprobs(inputs[s:s + batch], targets[s:s + batch], weights[s:s + batch]),
                                       np.float64) for s in range(0, len(rows), batch)])
    return loss * weights, weights.astype(np.float64)


def difference(loss: np.ndarray, weights: np.ndarray, late: slice, early: slice) -> tuple[float, float]:
    """(mean loss over target positions `late` minus over `early`, each pooled over windows; the standard
    error over windows of each window's own difference, nan with fewer than two windows)."""
    def means(part):
        return loss[:, part].sum(1), weights[:, part].sum(1)

    (ls, lw), (es, ew) = means(late), means(early)
    value = ls.sum() / max(lw.sum(), 1.0) - es.sum() / max(ew.sum(), 1.0)
    both = (lw > 0) & (ew > 0)
    per_window = ls[both] / lw[both] - es[both] / ew[both]
    stderr = per_window.std(ddof=1) / np.sqrt(len(per_window)) if len(per_window) > 1 else np.nan
    return float(value), float(stderr)


def induction(loss: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """The induction score of the planted windows' losses [n, T] (module docstring), with its standard error."""
    L, a, b = layout(loss.shape[1])
    return difference(loss, weights, slice(b, b + L - 1), slice(a, a + L - 1))


def slope(loss: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """The in-context slope of the plain windows' losses [n, T] (module docstring), with its standard error."""
    T = loss.shape[1]
    return difference(loss, weights, slice(T - T // 4, T), slice(0, T // 4))


def scores(logprobs: LogProbs, w: Windows, pad_id: int, batch: int = 32) -> dict[str, float]:
    """{"icl_probe/induction", "icl_probe/slope"} with "_stderr" beside each (nan ones left out), as the
    few-shot scores are named in metrics.jsonl."""
    out = {}
    for metric, fn, rows in (("induction", induction, w.planted), ("slope", slope, w.plain)):
        value, stderr = fn(*token_losses(logprobs, rows, pad_id, batch))
        out[f"{NAME}/{metric}"] = value
        if np.isfinite(stderr):
            out[f"{NAME}/{metric}_stderr"] = stderr
    return out


def heldout_split(store):
    """The split the probe reads: a store's held-out split (a mixture's first corpus's)."""
    return next(iter(store.heldout_splits.values()))


def results(values: dict[str, float]) -> dict:
    """`scores` as lm-eval's results dict holds a task's ({"results": {"icl_probe": {"induction": ...}}}), so
    salt_jax.eval.harness.scores flattens both alike."""
    return {"results": {NAME: {k.split("/", 1)[1]: v for k, v in values.items()}}}


def table(values: dict[str, float]) -> str:
    """The printed table: one line per metric, its value and standard error."""
    lines = ["|  Task   |  Metric | Value |   |Stderr|", "|---------|---------|------:|---|-----:|"]
    for key, value in values.items():
        if key.endswith("_stderr"):
            continue
        stderr = values.get(f"{key}_stderr")
        cell = "N/A" if stderr is None else f"{stderr:.4f}"
        lines.append(f"|{NAME}|{key.split('/', 1)[1]:<9}|{value:7.4f}|±  |{cell:>6}|")
    return "\n".join(lines)
