"""SALT_DS: sequence scores against NumPy, selection rules, salt_ds batches, resumable scoring."""

import copy
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from salt_jax.config import set_method
from salt_jax.data import batches as batches_lib
from salt_jax.data import store
from salt_jax.errors import UserError
from salt_jax.kd import selection
from salt_jax.kd.teacher import load_teacher
from salt_jax.model import sharding
from salt_jax.train import loop

from conftest import REPO
from reference import log_softmax


def _np_scores(logits, targets, mask, k):
    lp = log_softmax(np.asarray(logits, np.float64))
    out = []
    for b in range(logits.shape[0]):
        keep = []
        for t in range(logits.shape[1]):
            if not mask[b, t]:
                continue
            rank = np.sum(logits[b, t] > logits[b, t, targets[b, t]])
            if rank < k:
                keep.append(-lp[b, t, targets[b, t]])
        out.append(np.median(keep) if keep else np.nan)
    return np.array(out)


def test_scores_match_numpy_including_ties_large_k_and_empty():
    rng = np.random.default_rng(0)
    V = 12
    logits = rng.normal(size=(5, 9, V)).astype(np.float32)
    targets = rng.integers(0, V, (5, 9))
    mask = np.ones((5, 9), bool)
    mask[1, 6:] = False  # padding
    # sequence 2: every target is the teacher's least likely token -> no top-k token at all
    targets[2] = logits[2].argmin(-1)
    # sequence 3: four identical positions -> ties in the median (even count)
    logits[3, :4] = logits[3, 0]
    targets[3, :4] = logits[3, 0].argmax()
    targets[3, 4:] = logits[3, 4:].argmin(-1)
    for k in (1, 3, 10, 100):  # 100 > vocabulary: every token is learnable
        got = jax.device_get(selection.sequence_scores(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), k))
        want = _np_scores(logits, targets, mask, k)
        np.testing.assert_allclose(got["score"], want, rtol=1e-5, equal_nan=True)
        if k < V:
            assert np.isnan(got["score"][2])
    got = jax.device_get(selection.sequence_scores(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), 3))
    assert got["topk_fraction"][3] == pytest.approx(4 / 9)
    lp = -np.take_along_axis(log_softmax(logits.astype(np.float64)), targets[..., None], -1)[..., 0]
    assert got["mean_loss"][1] == pytest.approx(lp[1, :6].mean(), rel=1e-5)


def test_select_obeys_fraction_band_and_excludes_empty():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=1000)
    scores[:50] = np.nan
    kept = selection.select(scores, 0.3, seed=0)
    assert len(kept) == 300 and np.all(np.isfinite(scores[kept]))
    # the 300 highest finite scores
    assert set(kept) == set(np.argsort(-np.nan_to_num(scores, nan=-np.inf))[:300])
    finite = scores[np.isfinite(scores)]
    lo, hi = np.percentile(finite, [10, 60])
    banded = selection.select(scores, 0.3, band_low=10, band_high=60, seed=0)
    assert len(banded) == 300 and scores[banded].min() >= lo and scores[banded].max() <= hi
    narrow = selection.select(scores, 0.3, band_low=40, band_high=50, seed=0)  # fewer eligible than 300
    assert len(narrow) == np.sum((finite >= np.percentile(finite, 40)) & (finite <= np.percentile(finite, 50)))
    ties = np.zeros(100)
    a, b = selection.select(ties, 0.5, seed=3), selection.select(ties, 0.5, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.sort(a), np.sort(selection.select(ties, 0.5, seed=4)))


def test_select_is_identical_across_processes():
    code = ("import numpy as np; from salt_jax.kd import selection; s = np.random.default_rng(7).normal(size=500); "
            "s[::9] = np.nan; print(selection.select(s, 0.4, 5, 95, seed=11).tolist())")
    runs = [subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(json.loads(runs[0])) > 0


def test_selection_errors():
    with pytest.raises(UserError, match="ds_keep_fraction=1.5"):
        selection.select(np.ones(10), 1.5)
    with pytest.raises(UserError, match="ds_keep_fraction=0"):
        selection.select(np.ones(10), 0.0)
    with pytest.raises(UserError, match="selection is empty"):
        selection.select(np.full(10, np.nan), 0.5)
    with pytest.raises(UserError, match="ds_pool_size=500 exceeds the 100"):
        selection.pool_rows(100, 500, 0)


def _ds_config(tiny_config, teacher_dir):  # noqa: F811
    c = tiny_config
    set_method(c, "salt_ds")
    c.salt.teacher, c.salt.kd_steps = teacher_dir, 6
    return c


def test_salt_ds_kd_batches_come_only_from_the_selection(tiny_config, teacher_dir, tmp_path, monkeypatch):  # noqa: F811
    c = _ds_config(tiny_config, teacher_dir)
    seen = []
    original = batches_lib.Batches.device

    def recording(self, step, sharding_, rows=None):
        seen.append((step, self.rows is not None, set(self.indices(step).tolist())))
        return original(self, step, sharding_, rows)

    monkeypatch.setattr(batches_lib.Batches, "device", recording)
    loop.run(c, str(tmp_path / "run"))
    info = json.load(open(tmp_path / "run" / "selection.json"))
    assert info["pool"] == 6 * 8 * 2 and info["kept"] == 48  # auto pool: n_KD * batch / keep_fraction
    assert info["score_quantiles_kept"]["p0"] >= info["score_quantiles_pool"]["p50"] - 1e-6
    cache, tok = store.build_store(c.data)
    mesh = sharding.make_mesh(c.mesh)
    teacher = load_teacher(c.salt, c.model, tok.fingerprint(), mesh)
    rows = selection.pool_rows(cache.train.n_rows, 96, 0)
    scores = selection.score_pool(teacher, cache, rows, 10, 8, mesh, 0)  # cached by the run
    selected = set(rows[selection.select(scores["score"], 0.5)].tolist())
    assert [s for s, _, _ in seen] == list(range(12))
    for step, from_subset, idx in seen:
        if step < 6:
            assert from_subset and idx <= selected
        else:
            assert not from_subset
    assert any(not idx <= selected for step, _, idx in seen if step >= 6)  # phase two: the full data


def test_interrupted_scoring_resumes_to_the_same_scores(tiny_config, teacher_dir, monkeypatch):  # noqa: F811
    c = _ds_config(tiny_config, teacher_dir)
    cache, tok = store.build_store(c.data)
    mesh = sharding.make_mesh(c.mesh)
    teacher = load_teacher(c.salt, c.model, tok.fingerprint(), mesh)
    rows = selection.pool_rows(cache.train.n_rows, 40, 5)
    ref = selection.score_pool(teacher, cache, rows, 10, 8, mesh, 0)
    final = selection._score_file(cache, teacher.fingerprint, 10, rows)
    os.remove(final)
    calls = {"n": 0}
    real_get = jax.device_get

    def crashing_get(x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash during scoring")
        return real_get(x)

    monkeypatch.setattr(jax, "device_get", crashing_get)
    with pytest.raises(KeyboardInterrupt):
        selection.score_pool(teacher, cache, rows, 10, 8, mesh, 0, save_every=1)
    monkeypatch.setattr(jax, "device_get", real_get)
    with np.load(final + ".partial.npz") as f:
        assert int(f["done"]) == 16  # two batches of 8 were saved before the crash
    again = selection.score_pool(teacher, cache, rows, 10, 8, mesh, 0)
    for name in ("score", "topk_fraction", "mean_loss"):
        np.testing.assert_array_equal(ref[name], again[name])
    assert float(again["seconds"]) > 0  # the time of both attempts is kept for the report
    assert not os.path.exists(final + ".partial.npz")


def test_salt_ds_with_no_kd_steps_neither_loads_the_teacher_nor_scores(tiny_config, teacher_dir, tmp_path,
                                                                       monkeypatch):  # noqa: F811
    """n_KD = 0: every step is teacher-free, so nothing is scored (the auto pool would otherwise be the whole
    split) and the run equals the baseline's step for step."""
    c = _ds_config(tiny_config, teacher_dir)
    c.salt.kd_steps, c.train.steps = 0, 4
    monkeypatch.setattr(selection, "score_pool", lambda *a, **k: pytest.fail("scored a pool"))
    from salt_jax.kd import teacher as teacher_lib
    monkeypatch.setattr(teacher_lib, "load_teacher", lambda *a, **k: pytest.fail("loaded the teacher"))
    summary = loop.run(c, str(tmp_path / "ds"))
    assert summary["kd_phase_end"] == 0 and not os.path.exists(tmp_path / "ds" / "selection.json")
    base = copy.deepcopy(c)
    set_method(base, "baseline")
    assert loop.run(base, str(tmp_path / "base"))["final_eval_loss"] == summary["final_eval_loss"]


def test_pool_scores_are_keyed_by_the_sequence_length():
    """The same row indices hold other tokens at another seq_len: their cached scores must not be reused."""
    import types

    rows = np.arange(8)
    at = lambda L: types.SimpleNamespace(directory="/store", train=types.SimpleNamespace(seq_len=L))  # noqa: E731
    assert selection._score_file(at(64), "fp", 10, rows) != selection._score_file(at(128), "fp", 10, rows)
    assert selection._score_file(at(64), "fp", 10, rows) == selection._score_file(at(64), "fp", 10, rows)
