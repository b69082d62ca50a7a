"""The experiment pipeline: reach rule, compute accounting, report vs metrics, resumable re-runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from salt_jax.experiment import report, writeup
from salt_jax.train import loop
from salt_jax.train.metrics import read_metrics

from conftest import REPO


def test_reach_rule_on_hand_made_curves():
    steps = [0, 10, 20, 30, 40, 50]
    assert report.steps_to_reach(steps, [5, 4, 3, 2, 1.5, 1.4], 2.0) == 30
    assert report.steps_to_reach(steps, [5, 4, 3, 2.5, 2.2, 2.1], 2.0) is None  # never reached
    # noisy: dips below at 20, back above at 30, below for good from 40
    assert report.steps_to_reach(steps, [5, 3, 1.9, 2.1, 2.0, 1.8], 2.0) == 40
    # dips below and ends above: not reached
    assert report.steps_to_reach(steps, [5, 1.5, 1.5, 1.5, 1.5, 2.5], 2.0) is None
    assert report.steps_to_reach(steps, [5, 4, 3, 2.5, 2.2, 2.0], 2.0) == 50  # the baseline's own final point


def test_compute_counts_the_teacher_exactly_on_kd_steps():
    got = report.compute_curve([0, 5, 10, 20], student_step_flops=6.0, teacher_step_flops=1.5, kd_phase_end=10,
                               upfront_flops=7.0)
    np.testing.assert_array_equal(got, [7.0, 7 + 30 + 7.5, 7 + 60 + 15, 7 + 120 + 15])


def test_fewshot_scores_at_fractions_and_steps_to_the_baselines_final_score():
    """Hand-made few-shot records of two seeds per method: seed means at the fractions, the reach rule
    with each metric's direction (accuracy rises, bits per byte falls), stderr beside the final score."""
    from types import SimpleNamespace

    def run(acc, bpb):
        return SimpleNamespace(workdir="w", fewshot=[
            {"step": s, "split": "fewshot", "t/acc": a, "t/acc_stderr": 0.02, "p/bits_per_byte": b,
             "p/byte_perplexity": 2 ** b, "g/exact_match": 0.0, "g/exact_match_stderr": 0.0}
            for s, a, b in zip((0, 25, 50, 70, 100), acc, bpb)])

    runs = {"baseline": [run([.25, .30, .34, .36, .40], [8, 5, 4.5, 4.2, 4.0]),
                         run([.25, .32, .36, .38, .42], [8, 5, 4.3, 4.0, 3.8])],
            "salt": [run([.25, .36, .40, .41, .44], [8, 4.6, 4.0, 3.8, 3.7]),
                     run([.25, .34, .38, .43, .42], [8, 4.6, 4.2, 3.9, 3.8])]}
    got = report.fewshot(runs, total_steps=100)
    assert set(got) == {"t/acc", "p/bits_per_byte", "g/exact_match"}  # (stderr, byte perplexity: not rows)
    assert got["t/acc"]["signal"] and got["p/bits_per_byte"]["signal"] and not got["g/exact_match"]["signal"]
    acc, bpb = got["t/acc"], got["p/bits_per_byte"]
    assert acc["target"] == pytest.approx(0.41) and not acc["lower_is_better"]
    assert acc["methods"]["salt"]["at_fraction"] == pytest.approx({"25": .35, "50": .39, "70": .42, "100": .43})
    assert acc["methods"]["salt"]["reach_step"] == 70  # 0.42 >= 0.41 from step 70 on
    assert acc["methods"]["baseline"]["reach_step"] == 100
    assert acc["methods"]["salt"]["final_stderr"] == pytest.approx(0.02)
    assert bpb["target"] == pytest.approx(3.9) and bpb["lower_is_better"]
    assert bpb["methods"]["salt"]["reach_step"] == 70  # 3.85 <= 3.9 at 70, 3.75 at 100
    rows = writeup._fewshot_markdown({"fewshot": got})
    assert "| t/acc (higher is better) | salt | 0.3500 | 0.3900 | 0.4200 | 0.4300 | 0.4300 ± 0.0200 | 70 |" in rows
    assert "| g/exact_match (higher is better) | salt | 0.0000 | 0.0000 | 0.0000 | 0.0000 | 0.0000 ± 0.0000 | " \
           "no signal |" in rows
    text = writeup.fewshot_conclusion({"fewshot": got})
    assert "on t/acc salt is ahead at every fraction (0.4300 vs 0.4100 at the end) and reaches the baseline's " \
           "final 0.4100 at step 70" in text and "No signal at this scale on g/exact_match" in text


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory, cache_dir):
    workdir = str(tmp_path_factory.mktemp("exp"))
    out = subprocess.run([sys.executable, "-m", "salt_jax.experiment",
                          f"--config={os.path.join(REPO, 'configs', 'experiments', 'test_tiny.py')}",
                          "--config.student.data.max_files=60", "--config.teacher.data.max_files=60",
                          f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, SALT_JAX_CACHE=cache_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"report: {workdir}/report.md" in out.stdout
    return workdir


def test_report_matches_the_runs_metrics(experiment_dir):
    results = json.load(open(os.path.join(experiment_dir, "results.json")))
    text = open(os.path.join(experiment_dir, "report.md")).read()
    for method in ("baseline", "salt"):
        evals = [r for r in read_metrics(os.path.join(experiment_dir, f"{method}-s0", "metrics.jsonl"))
                 if r["split"] == "eval"]
        m = results["methods"][method]
        assert m["steps"] == [r["step"] for r in evals] == list(range(0, 25, 4))
        assert m["eval_loss_mean"] == [r["loss"] for r in evals]
        final = evals[-1]
        assert f"| {method} |" in text and f"{final['loss']:.4f} / {final['accuracy']:.3f}" in text
        at70 = next(r for r in evals if r["step"] >= round(0.7 * 24))
        assert m["at_fraction"]["70"]["loss"] == at70["loss"]
    assert results["target_loss"] == results["methods"]["baseline"]["eval_loss_mean"][-1]
    base = results["methods"]["baseline"]
    assert base["reach_step"] == report.steps_to_reach(base["steps"], base["eval_loss_mean"], results["target_loss"])
    salt = results["methods"]["salt"]
    assert salt["kd_phase_end_mean"] == round(0.175 * 24)
    # compute: salt's extra over the baseline is exactly the teacher forward on the KD steps
    extra = np.array(salt["compute_baseline_steps"]) - np.array(base["compute_baseline_steps"])
    from salt_jax.model import presets
    from salt_jax.model.flops import flops_per_token

    ratio = flops_per_token(presets.model_config("test-tiny-teacher"), 32) / (
        3 * flops_per_token(presets.model_config("test-tiny"), 32))
    want = np.minimum(salt["steps"], 4) * ratio  # the teacher ran on steps 0..3 only
    np.testing.assert_allclose(extra, want, rtol=1e-12, atol=1e-12)
    for png in ("loss_vs_step.png", "loss_vs_compute.png"):
        assert os.path.getsize(os.path.join(experiment_dir, png)) > 10_000
    assert "## Conclusion" in text and results["conclusion"] in text


def test_rerun_skips_finished_runs_and_gives_the_same_results(experiment_dir, monkeypatch):
    before = json.load(open(os.path.join(experiment_dir, "results.json")))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(loop, "run", no_training)
    from ml_collections import config_flags  # noqa: F401
    from salt_jax.experiment import pipeline
    import importlib.util

    spec = importlib.util.spec_from_file_location("exp_cfg", os.path.join(REPO, "configs", "experiments",
                                                                          "test_tiny.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    cfg.student.data.max_files = cfg.teacher.data.max_files = 60
    after = pipeline.run_experiment(cfg, experiment_dir)
    after = json.loads(json.dumps(after))
    assert after["methods"] == before["methods"] and after["target_loss"] == before["target_loss"]


def test_interrupted_experiment_finishes_the_missing_run(experiment_dir, tmp_path):
    # a copy whose salt run was cut after its step-12 checkpoint: only that run is resumed
    import shutil

    copy = str(tmp_path / "exp")
    shutil.copytree(experiment_dir, copy)
    salt_dir = os.path.join(copy, "salt-s0")
    os.remove(os.path.join(salt_dir, "summary.json"))
    shutil.rmtree(os.path.join(salt_dir, "checkpoints", "24"))
    os.rename(os.path.join(copy, "results.json"), os.path.join(copy, "results.old.json"))
    out = subprocess.run([sys.executable, "-m", "salt_jax.experiment",
                          f"--config={os.path.join(REPO, 'configs', 'experiments', 'test_tiny.py')}",
                          "--config.student.data.max_files=60", "--config.teacher.data.max_files=60",
                          f"--workdir={copy}"], cwd=REPO, capture_output=True, text=True, timeout=900,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[baseline seed 0] already finished" in out.stdout and "[teacher] already finished" in out.stdout
    assert "resuming" in out.stdout
    old = json.load(open(os.path.join(copy, "results.old.json")))
    new = json.load(open(os.path.join(copy, "results.json")))
    assert new["methods"]["salt"]["eval_loss_mean"] == old["methods"]["salt"]["eval_loss_mean"]


def test_method_specs_with_several_overrides():
    from salt_jax.experiment import pipeline
    from salt_jax.errors import UserError

    specs = pipeline.split_methods("baseline, salt[kd_steps=50,kd_weight=0.8],salt-linear")
    assert specs == ["baseline", "salt[kd_steps=50,kd_weight=0.8]", "salt-linear"]
    assert pipeline.parse_method(specs[1]) == ("salt", {"kd_steps": 50, "kd_weight": 0.8})
    assert pipeline.run_name(specs[1]) == "salt-kd_steps50-kd_weight0.8"
    from salt_jax.recipes import tiny_run
    import ml_collections

    exp = ml_collections.ConfigDict({"student": tiny_run(), "progress": False})
    c = pipeline.student_config(exp, specs[1], 2, "/t", 1e-3)
    assert (c.salt.method, c.salt.kd_steps, c.salt.kd_weight, c.seed, c.data.seed) == ("salt", 50, 0.8, 2, 2)
    with pytest.raises(UserError, match="salt.kd_steps=2.5"):
        pipeline.student_config(exp, "salt[kd_steps=2.5]", 0, "/t", 1e-3)


def test_a_misspelled_method_is_refused_before_anything_trains(tmp_path):
    import ml_collections

    from salt_jax.errors import UserError
    from salt_jax.experiment import pipeline

    exp = ml_collections.ConfigDict(dict(methods="baseline,salty", seeds="0"))  # no teacher config: nothing can train
    with pytest.raises(UserError, match="config.methods: unknown method 'salty'"):
        pipeline.run_experiment(exp, str(tmp_path))
    assert os.listdir(tmp_path) == []
    exp = ml_collections.ConfigDict(dict(methods="baseline,salt", seeds="0", teacher_path=str(tmp_path / "nope")))
    with pytest.raises(UserError, match=r"config.teacher_path=.*nope: no such directory"):
        pipeline.run_experiment(exp, str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_the_report_refuses_an_unfinished_run(tmp_path, tiny_config):
    from salt_jax import paths
    from salt_jax.errors import UserError

    paths.write_json(str(tmp_path / "config.json"), json.loads(tiny_config.to_json_best_effort()))  # 12 steps
    with pytest.raises(UserError, match=r"metrics.jsonl: it holds no evaluation, so the run is unfinished"):
        report.RunOutputs(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"split": "eval", "step": s, "loss": 5.0}) + "\n"
                                                    for s in (0, 6)))
    with pytest.raises(UserError, match=r"its last evaluation is at step 6 of 12, so the run is unfinished or the "
                                         r"file was cut; re-run the experiment command"):
        report.RunOutputs(str(tmp_path))


def test_a_run_saved_before_a_config_field_existed_is_the_same_config(tmp_path, tiny_config):
    """Upgrading salt_jax adds fields (with defaults that keep the old behaviour): a finished run saved
    without them is not 'another config'; a changed value still is."""
    from salt_jax import paths
    from salt_jax.errors import UserError
    from salt_jax.experiment import pipeline
    from salt_jax.kd import schedules

    written = tiny_config.copy_and_resolve_references()
    written.salt = schedules.resolved(written.salt, written.train.steps)  # as the run wrote it
    saved = json.loads(written.to_json_best_effort())
    del saved["data"]["shared_cache"]  # written by a version without the field
    paths.write_json(str(tmp_path / "config.json"), saved)
    pipeline._check_same_config(tiny_config, str(tmp_path))
    tiny_config.data.shared_cache = True  # not the default: the old run did not do this
    with pytest.raises(UserError, match=r"config.data.shared_cache \(False there, True now\)"):
        pipeline._check_same_config(tiny_config, str(tmp_path))


def _experiment_config(name: str, arg: str | None = None):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("name", ["demo", "gpu_small"])
def test_experiments_are_in_the_papers_regime(name):
    """Teacher about half the student's parameters (with and without embeddings) and trained on at least the
    student's tokens; n_KD 17.5%; the first demo pair (kept as the contrast) is not."""
    from salt_jax.model.flops import embedding_params, param_count

    def regime(exp):
        t, s = exp.teacher, exp.student
        body = lambda m: param_count(m) - embedding_params(m)  # noqa: E731
        tokens = lambda c: c.train.steps * c.data.batch_size * c.data.seq_len  # noqa: E731
        return param_count(t.model) / param_count(s.model), body(t.model) / body(s.model), tokens(t) / tokens(s)

    exp = _experiment_config(name)
    ratio, body_ratio, tokens = regime(exp)
    assert 0.4 <= ratio <= 0.6 and 0.4 <= body_ratio <= 0.6 and tokens >= 1.0, (ratio, body_ratio, tokens)
    assert exp.student.salt.kd_steps == -1 and exp.student.salt.kd_fraction == 0.175
    if name == "demo":
        first = regime(_experiment_config("demo", "first_pair"))
        np.testing.assert_allclose(first, (399_840 / 1_496_480, 203_232 / 1_168_800, 0.8))


def test_gpu_small_fits_ten_minutes_by_the_flop_model_and_runs_on_cpu(teacher_dir, cache_dir, tmp_path):
    """The docstring's arithmetic (one H100, 40% MFU), every run of the plan validated, and the SALT
    student's settings (bf16, chunked loss, bf16 teacher) training 3 steps at test size on the CPU."""
    from salt_jax.experiment import pipeline
    from salt_jax.model.flops import flops_per_token

    exp = _experiment_config("gpu_small")
    t, s = exp.teacher, exp.student
    seq, tokens = s.data.seq_len, s.data.batch_size * s.data.seq_len
    n_kd = round(s.salt.kd_fraction * s.train.steps)
    flops = tokens * (3 * flops_per_token(t.model, seq) * t.train.steps + 2 * 3 * flops_per_token(s.model, seq)
                      * s.train.steps + flops_per_token(t.model, seq) * n_kd)
    minutes = flops / (0.4 * 989e12) / 60
    assert 8.0 < minutes <= 10.0 and n_kd == 700, minutes
    runs = pipeline.plan(exp, str(tmp_path / "plan"))
    assert [label for label, _, _ in runs] == ["teacher", "baseline seed 0", "salt seed 0"]
    c = runs[-1][2]
    assert (c.model.dtype, c.train.loss, c.salt.teacher_dtype) == ("bfloat16", "chunked", "bfloat16")
    c.salt.teacher, c.salt.teacher_preset = teacher_dir, ""
    tiny = __import__("salt_jax.config", fromlist=["base_config"]).base_config("test-tiny").model
    c.model.update({k: tiny[k] for k in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                                         "mlp_dim", "max_len", "tie_embeddings")})
    c.data.tokenizer.kind, c.data.cache_dir, c.data.max_files, c.data.heldout_fraction = "bytes", cache_dir, 60, 0.1
    c.data.seq_len, c.data.batch_size, c.data.heldout_batches = 32, 8, 2
    c.train.steps, c.train.heldout_every, c.train.checkpoint_every, c.train.log_every = 3, 3, 3, 1
    c.train.progress, c.optim.warmup_steps, c.eval.tasks = False, 1, ""
    summary = loop.run(c, str(tmp_path / "salt"))
    assert summary["kd_phase_end"] == 1 and np.isfinite(summary["final_eval_loss"])


def test_the_teacher_line_and_the_step_each_method_passes_it(tmp_path):
    """A hand-made teacher workdir: its final loss, tokens, and the reach rule against that loss."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    config = {"train": {"steps": 600}, "data": {"batch_size": 16, "seq_len": 128}, "model": {}, "salt": {}}
    (teacher / "config.json").write_text(json.dumps(config))
    evals = [(0, 7.6), (300, 4.9), (600, 4.5)]
    (teacher / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "split": "eval", "loss": v,
                                                               "accuracy": 0.1}) + "\n" for s, v in evals))
    methods = {"baseline": {"steps": [0, 100, 200, 300], "eval_loss_mean": [7.6, 4.6, 4.49, 4.3]},
               "salt": {"steps": [0, 100, 200, 300], "eval_loss_mean": [7.6, 4.5, 4.4, 4.2]},
               "rkd": {"steps": [0, 100, 200, 300], "eval_loss_mean": [7.6, 4.4, 4.6, 4.6]}}
    line = report.teacher_line(report.RunOutputs(str(teacher)), methods)
    assert line == {"final_loss": 4.5, "steps": 600, "tokens": 600 * 16 * 128,
                    "passed_at": {"baseline": 200, "salt": 100, "rkd": None}}
    text = "\n".join(writeup._teacher_markdown({"teacher": line, "total_steps": 300},
                                               {"teacher_params": 800, "student_params": 1600,
                                                "params_ratio_no_embedding": 0.45, "batch_size": 16,
                                                "seq_len": 128}))
    assert "0.50x the student's parameters (0.45x without embeddings)" in text and "(2.00x the student's run)" in text
    assert "| baseline | 200 | 67% |" in text and "| salt | 100 | 33% |" in text and "| rkd | not reached | - |" in text


def test_horizon_study_configs_and_its_table_from_hand_made_results():
    """Each horizon multiplies the students' steps with the 1x teacher fixed (n_KD stays 17.5%); the table
    pairs each method's final loss with the baseline's seed by seed."""
    from salt_jax.errors import UserError
    from salt_jax.experiment import horizon

    exp = _experiment_config("demo")
    studies = horizon.experiments(exp, "runs/demo", horizon.parse("4,1,2"))
    assert [(h, d, e.student.train.steps, e.teacher_path) for h, d, e in studies] == [
        (1, "runs/demo", 500, ""), (2, "runs/demo/horizon-2x", 1000, "runs/demo/teacher"),
        (4, "runs/demo/horizon-4x", 2000, "runs/demo/teacher")]
    assert studies[0][2].student.eval.tasks and not studies[2][2].student.eval.tasks
    for bad in ("2,4", "1,x"):
        with pytest.raises(UserError, match="--horizons"):
            horizon.parse(bad)

    def method(finals, reach):
        return {"seeds": [0, 1], "final_loss_per_seed": finals, "final_loss_mean": float(np.mean(finals)),
                "reach_step_fraction": reach}

    results = {1: {"total_steps": 500, "methods": {"baseline": method([4.0, 4.2], 1.0),
                                                   "salt": method([3.9, 4.0], 0.8)}},
               2: {"total_steps": 1000, "methods": {"baseline": method([3.6, 3.7], 1.0),
                                                    "salt": method([3.65, 3.7], None)}}}
    rows = horizon.summary(results)
    assert [(r["horizon"], r["method"]) for r in rows] == [(1, "salt"), (2, "salt")]
    np.testing.assert_allclose([r["paired_diff_mean"] for r in rows], [-0.15, 0.025])
    np.testing.assert_allclose([r["paired_diff_std"] for r in rows], [0.05, 0.025])
    text = horizon.markdown(rows, "CMD")
    assert "| 1x | 500 | salt | 2 | 4.1000 | 3.9500 | -0.1500 ± 0.0500 | 80% of the steps |" in text
    assert "| 2x | 1000 | salt | 2 | 3.6500 | 3.6750 | +0.0250 ± 0.0250 | not reached |" in text


def test_a_horizon_combined_from_experiments_with_other_seeds():
    """Seed 0 from one experiment, seeds 1 and 2 from another: finals concatenated, the mean curve weighted by
    seeds, the target (the baseline's final over all three) and the reach step recomputed on the combined
    curve, by hand."""
    from salt_jax.errors import UserError
    from salt_jax.experiment import horizon

    steps = [0, 50, 100]

    def part(seeds, curves):  # curves: method -> per-seed eval losses at `steps`
        methods = {}
        for name, per_seed in curves.items():
            c = np.array(per_seed)
            methods[name] = {"seeds": seeds, "steps": steps, "eval_loss_mean": c.mean(0).tolist(),
                             "final_loss_per_seed": c[:, -1].tolist(), "final_loss_mean": float(c[:, -1].mean()),
                             "kd_phase_end_mean": 18 if name == "salt" else 0, "reach_step_per_seed": [100] * len(seeds),
                             "at_fraction": {"100": {"step": 100, "loss": float(c[:, -1].mean())}}}
        return {"total_steps": 100, "teacher": None, "methods": methods}

    a = part([0], {"baseline": [[9.0, 5.0, 4.0]], "salt": [[9.0, 4.0, 3.9]]})
    b = part([1, 2], {"baseline": [[9.0, 5.2, 4.2], [9.0, 5.1, 4.1]], "salt": [[9.0, 3.9, 4.15], [9.0, 4.2, 4.05]]})
    got = horizon.combine([a, b])
    base, salt = got["methods"]["baseline"], got["methods"]["salt"]
    assert base["seeds"] == [0, 1, 2] and salt["final_loss_per_seed"] == [3.9, 4.15, 4.05]
    np.testing.assert_allclose(got["target_loss"], (4.0 + 4.2 + 4.1) / 3)  # 4.1
    np.testing.assert_allclose(salt["eval_loss_mean"], [9.0, (4.0 + 3.9 + 4.2) / 3, (3.9 + 4.15 + 4.05) / 3])
    assert salt["reach_step"] == 50 and salt["reach_step_fraction"] == 0.5  # 4.033 and 4.033 <= 4.1 from step 50
    # (seed 1 alone would not: its 4.15 at the end is above the combined target)
    assert base["reach_step"] == 100 and salt["at_fraction"]["100"]["loss"] == pytest.approx(4.0333333)
    (row,) = horizon.summary({1: got})
    np.testing.assert_allclose([row["paired_diff_mean"], row["paired_diff_std"]],
                               [np.mean([-0.1, -0.05, -0.05]), np.std([-0.1, -0.05, -0.05])])
    with pytest.raises(UserError, match="seed 1 is in two"):
        horizon.combine([b, b])
