"""The in-context-learning probe (salt_jax.eval.icl_probe): its windows, its two numbers against hand-computed
values on stand-in models (fixed losses, a perfect copier, a loss falling linearly with position), the report's
direction for them, and a tiny run that writes them to metrics.jsonl and the command line that agrees."""

import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from salt_jax.eval import icl_probe
from salt_jax.experiment import report, writeup

PAD = 0


class StreamSplit:
    """A held-out split over the stream 1, 2, 3, ... (every token distinct, none the pad id): row k is
    stream[k*T : k*T + T + 1], as TokenSplit lays rows out."""

    def __init__(self, seq_len: int, n_rows: int):
        self.seq_len, self.n_rows = seq_len, n_rows

    def rows(self, idx):
        T = self.seq_len
        return np.stack([np.arange(k * T, k * T + T + 1) + 1 for k in np.asarray(idx)]).astype(np.int32)


def test_layout_and_windows_are_seeded_and_planted_twice():
    assert icl_probe.layout(512) == (32, 128, 384)  # L = 32, a = T/4, b = a + T/2
    assert icl_probe.layout(32) == (8, 8, 24)  # L = T/4 below 128 tokens: the repeat ends at the row's end
    assert icl_probe.layout(8) == (2, 2, 6)
    split = StreamSplit(32, 50)
    w = icl_probe.windows(split, seed=7, count=10)
    again = icl_probe.windows(split, seed=7, count=10)
    np.testing.assert_array_equal(w.planted, again.planted)  # a pure function of (split, seed, count)
    assert not np.array_equal(w.planted, icl_probe.windows(split, seed=8, count=10).planted)
    L, a, b = icl_probe.layout(32)
    for plain, planted in zip(w.plain, w.planted):
        span = planted[a:a + L]
        np.testing.assert_array_equal(planted[b:b + L], span)
        np.testing.assert_array_equal(np.diff(span), 1)  # a contiguous piece of the held-out stream ...
        row = (plain[0] - 1) // 32
        assert not row * 32 + 1 <= span[0] <= span[-1] <= row * 32 + 33  # ... not all of the window's own row
        keep = np.ones(33, bool)
        keep[a:a + L] = keep[b:b + L] = False
        np.testing.assert_array_equal(planted[keep], plain[keep])  # the rest of the window as read
    assert len({int(p[0]) for p in w.plain}) == 10  # rows without replacement
    assert len(icl_probe.windows(StreamSplit(32, 4), seed=7).plain) == 4  # every row when there are fewer


def _table_model(table: dict):
    """A stand-in forward: the losses `table[first input token]` [T] of each row, whatever it predicts."""
    def logprobs(inputs, targets, weights):
        return -np.stack([table[int(r[0])] for r in inputs]) * weights
    return logprobs


def test_induction_and_slope_of_fixed_per_position_losses():
    """T = 16: L = 4, first occurrence at row positions 4-7 (scored targets 4, 5, 6), repeat at 12-15 (targets
    12, 13, 14); quarters: targets 0-3 and 12-15. Hand-computed from the losses given."""
    split = StreamSplit(16, 2)
    w = icl_probe.windows(split, seed=0, count=2)
    keys = [int(r[0]) for r in w.plain]
    first, rest = np.full(16, 9.0), np.full(16, 9.0)
    first[4:7], first[12:15] = 3.0, 1.0  # window 0: 3 nats on the first occurrence, 1 on the repeat
    rest[4:7], rest[12:15] = 2.0, 1.5  # window 1: 2 and 1.5
    got = icl_probe.scores(_table_model({keys[0]: first, keys[1]: rest}), w, PAD, batch=1)
    # induction: mean(1, 1, 1, 1.5, 1.5, 1.5) - mean(3, 3, 3, 2, 2, 2) = 1.25 - 2.5; per window -2 and -0.5
    assert got["icl_probe/induction"] == pytest.approx(-1.25, abs=1e-12)
    assert got["icl_probe/induction_stderr"] == pytest.approx(0.75, abs=1e-12)  # std(-2, -0.5) = 1.5/sqrt2
    # slope: targets 12-15 (1, 1, 1, 9 and 1.5, 1.5, 1.5, 9) minus 0-3 (all 9): 3 - 9 and 3.375 - 9
    assert got["icl_probe/slope"] == pytest.approx((3.0 + 3.375) / 2 - 9.0, abs=1e-12)
    assert got["icl_probe/slope_stderr"] == pytest.approx(0.375 / 2, abs=1e-12)

    # A padded target counts in no mean (as in the held-out loss): window 1's target 13 made the pad id.
    loss = np.stack([first, rest])
    weights = np.ones_like(loss)
    weights[1, 13] = 0.0
    value, _ = icl_probe.induction(loss * weights, weights)
    assert value == pytest.approx((3 * 1.0 + 2 * 1.5) / 5 - 2.5, abs=1e-12)


def _copier(vocab: int, eps: float):
    """A stand-in forward that copies perfectly: at position t it predicts, with probability 1 - eps, the token
    that followed the last earlier occurrence of the current token; with no earlier occurrence, uniform."""
    def logprobs(inputs, targets, weights):
        out = np.full(inputs.shape, -math.log(vocab))
        for i, row in enumerate(inputs):
            for t in range(len(row)):
                seen = [j for j in range(t) if row[j] == row[t]]
                if seen:
                    hit = row[seen[-1] + 1] == targets[i, t]
                    out[i, t] = math.log(1 - eps) if hit else math.log(eps / (vocab - 1))
        return out * weights
    return logprobs


def test_a_perfect_copier_scores_the_largest_drop_and_a_uniform_model_zero():
    """Every held-out token is distinct here, so only the planted repeat can be copied: the copier's first
    occurrence costs log V per token and its repeat -log(1 - eps) ~ 0, so its induction score is minus its
    first-occurrence loss (the extreme). Its plain windows hold no repeats: slope 0, as for a uniform model."""
    vocab, eps = 1000, 1e-9
    w = icl_probe.windows(StreamSplit(32, 40), seed=3, count=8)
    got = icl_probe.scores(_copier(vocab, eps), w, PAD, batch=3)
    assert got["icl_probe/induction"] == pytest.approx(-math.log(1 - eps) - math.log(vocab), abs=1e-12)
    assert got["icl_probe/induction"] == pytest.approx(-math.log(vocab), abs=1e-8)  # = -(first occurrence loss)
    assert got["icl_probe/slope"] == 0.0 and got["icl_probe/induction_stderr"] == pytest.approx(0.0, abs=1e-12)
    uniform = icl_probe.scores(lambda i, t, wt: np.full(i.shape, -math.log(vocab)) * wt, w, PAD)
    assert uniform["icl_probe/induction"] == 0.0 and uniform["icl_probe/slope"] == 0.0


def test_slope_of_a_loss_falling_linearly_with_position():
    """loss(t) = 5 - 0.05 t: slope = mean over targets 24-31 minus over 0-7 = -0.05 * 24; induction = targets
    24-30 minus 8-14 = -0.05 * 16 (a position effect alone, which the induction score includes)."""
    w = icl_probe.windows(StreamSplit(32, 20), seed=1, count=5)
    falling = lambda inputs, targets, weights: -(5.0 - 0.05 * np.arange(32))[None].repeat(len(inputs), 0)  # noqa: E731
    got = icl_probe.scores(falling, w, PAD)
    assert got["icl_probe/slope"] == pytest.approx(-1.2, abs=1e-12)
    assert got["icl_probe/induction"] == pytest.approx(-0.8, abs=1e-12)
    assert got["icl_probe/slope_stderr"] == pytest.approx(0.0, abs=1e-12)


def test_short_windows_are_refused_with_the_field_named():
    from salt_jax.errors import UserError

    with pytest.raises(UserError, match="config.eval.tasks: icl_probe needs windows of at least 8 tokens"):
        icl_probe.check(6, "config.eval.tasks")


def test_the_report_reads_the_probe_as_lower_is_better():
    """A method whose induction score falls further (more copying) is ahead and reaches the baseline's final
    value first, as for bits per byte."""
    assert report.lower_is_better("icl_probe/induction") and report.lower_is_better("icl_probe/slope")

    def run(induction):
        return SimpleNamespace(workdir="w", fewshot=[
            {"step": s, "split": "fewshot", "icl_probe/induction": v, "icl_probe/induction_stderr": 0.01}
            for s, v in zip((0, 25, 50, 70, 100), induction)])

    runs = {"baseline": [run([0.0, -0.2, -0.4, -0.6, -0.8])], "salt": [run([0.0, -0.5, -0.7, -0.9, -1.0])]}
    got = report.fewshot(runs, total_steps=100)["icl_probe/induction"]
    assert got["lower_is_better"] and got["signal"] and got["methods"]["salt"]["reach_step"] == 70  # -0.9 <= -0.8
    rows = writeup._fewshot_markdown({"fewshot": report.fewshot(runs, total_steps=100)})
    assert "| icl_probe/induction (lower is better) | salt | -0.5000 | -0.7000 | -0.9000 | -1.0000 | " \
           "-1.0000 ± 0.0100 | 70 |" in rows
    assert "on icl_probe/induction salt is ahead at every fraction" in writeup.fewshot_conclusion(
        {"fewshot": report.fewshot(runs, total_steps=100)})


def test_a_tiny_run_writes_the_probe_and_the_command_line_agrees(tiny_config, tmp_path, capsys):
    """config.eval.tasks=icl_probe: metrics.jsonl's few-shot lines carry both numbers at steps 0, 6, 12;
    `python -m salt_jax.eval --tasks=icl_probe` (its evaluate_run) gives the last line's numbers on the last
    checkpoint; the probe's forward is the held-out loss's model (its mean loss over the held-out set
    equals the eval line's)."""
    from salt_jax.data import batches as batches_lib
    from salt_jax.data import store as store_lib
    from salt_jax.eval import load
    from salt_jax.eval.engine import Engine
    from salt_jax.eval.runs import evaluate_run
    from salt_jax.train import loop
    from salt_jax.train.metrics import read_metrics

    c = tiny_config
    c.eval.tasks, c.eval.limit, c.eval.batch_size = "icl_probe", 16, 8
    workdir = str(tmp_path / "run")
    loop.run(c, workdir)
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    fewshot = [r for r in records if r["split"] == "fewshot"]
    assert [r["step"] for r in fewshot] == [0, 6, 12]
    for r in fewshot:
        assert {"icl_probe/induction", "icl_probe/induction_stderr", "icl_probe/slope",
                "icl_probe/slope_stderr"} <= set(r) and all(np.isfinite(r[k]) for k in r if k != "split")
    last = fewshot[-1]

    results = evaluate_run(workdir, ["icl_probe"], limit=16, batch_size=8, seed=c.eval.seed)
    assert results["results"]["icl_probe"]["induction"] == pytest.approx(last["icl_probe/induction"], rel=1e-5)
    assert results["results"]["icl_probe"]["slope"] == pytest.approx(last["icl_probe/slope"], rel=1e-5)
    assert os.path.exists(os.path.join(workdir, "eval_results.json"))
    assert "|icl_probe|induction|" in capsys.readouterr().out  # the table printed

    loaded = load.load(workdir)
    engine = Engine(loaded.model_cfg, loaded.params, loaded.mesh, batch_size=8)
    store, tok = store_lib.build_store(c.data)
    rows = np.concatenate(batches_lib.eval_sets(store, c.data.batch_size, c.data.heldout_batches, tok.pad_id)[""])
    loss, weights = icl_probe.token_losses(engine.token_logprobs, rows, tok.pad_id, 8)
    final_eval = [r for r in records if r["split"] == "eval"][-1]
    assert loss.sum() / weights.sum() == pytest.approx(final_eval["loss"], rel=1e-4)
