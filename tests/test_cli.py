"""The training CLI end to end, its outputs, resume, and its one-line errors."""

import json
import platform
import re
import os
import subprocess
import sys

import pytest

from conftest import REPO

TINY = [f"--config={os.path.join(REPO, 'configs', 'test_tiny.py')}", "--config.train.steps=30",
        "--config.train.heldout_every=15", "--config.train.checkpoint_every=15", "--config.data.max_files=60"]


def _cli(args, cache_dir):
    env = dict(os.environ, SALT_JAX_CACHE=cache_dir)
    return subprocess.run([sys.executable, "-m", "salt_jax.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_trains_writes_outputs_and_resumes(tmp_path, cache_dir):
    workdir = str(tmp_path / "run")
    out = _cli(TINY + [f"--workdir={workdir}"], cache_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["train"]["steps"] == 30 and config["model"]["d_model"] == 32
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in train] == list(range(5, 31, 5))
    assert train[0]["tokens_per_sec"] > 0  # the first interval is timed without the compiling step
    for r in train:
        for key in ("loss", "ntp_loss", "kd_loss", "kd_weight", "learning_rate", "tokens_per_sec"):
            assert key in r
        assert r["tokens_per_sec"] > 0 and r["loss"] == r["ntp_loss"] and r["kd_weight"] == 0.0
    assert [r["step"] for r in evals] == [0, 15, 30]
    # held-out loss starts near log(259) = 5.56 and falls clearly within 30 steps
    assert evals[0]["loss"] > 5.0 and evals[-1]["loss"] < evals[0]["loss"] - 1.0
    assert 0.0 <= evals[-1]["accuracy"] <= 1.0
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["15", "30"]
    assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    corpus = json.load(open(os.path.join(workdir, "summary.json")))["corpus"]  # what determined the data
    assert corpus["source"] == "stdlib" and corpus["python"] == platform.python_version()
    assert 40 < corpus["train_files"] < 60  # 60 files, a few held out
    assert corpus["train_tokens"] > 0 and f"corpus: stdlib source {corpus['source_fingerprint']}, Python " in out.stdout

    again = _cli(TINY + [f"--workdir={workdir}"], cache_dir)  # same command: resumes, nothing left to do
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stdout
    assert [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))] == records


# Every user error (bad values, mesh, data, checkpoints, ...) is covered row by row from docs/errors.md
# in tests/test_errors.py.


def test_help_lists_flags_methods_and_every_config_field(cache_dir):
    from salt_jax.config import base_config

    out = _cli(["--help"], cache_dir)  # (-h is the same flag: salt_jax.cli.HELP_FLAGS)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "--workdir: Directory for checkpoints" in text and "--config: Run config file" in text
    assert "  salt-adaptive  SALT, KD ends when the student catches the teacher" in text
    assert "  train.steps = 200  # total training steps" in text
    assert "  data.tokenizer.kind = 'bytes'  # " in text and "  model.d_model = 32  # from the preset" in text
    fields = [m.group(1) for m in (re.match(r"  ([a-z0-9_.]+) = ", ln) for ln in text.splitlines()) if m]
    want = []

    def walk(d, prefix=""):
        for k, v in d.items():
            walk(v, f"{prefix}{k}.") if isinstance(v, dict) else want.append(prefix + k)

    walk(base_config().to_dict())
    assert sorted(fields) == sorted(want)  # every field, once


def test_a_missing_teacher_is_reported_before_the_tokenizer_or_store_is_built(tmp_path):
    """The check that can fail comes first: no cache directory is created, no tokenizer trained."""
    cache = tmp_path / "cache"
    out = _cli(["--config=" + os.path.join(REPO, "configs", "demo.py:salt"), f"--workdir={tmp_path / 'run'}",
                "--config.salt.teacher=/nonexistent/teacher"], str(cache))
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: config.salt.teacher=/nonexistent/teacher: no such directory; give the teacher run's workdir or one "
        "of its checkpoint directories"]
    assert not cache.exists()


def test_the_walkthroughs_teacher_run_carries_no_teacher_path():
    """configs/demo.py:teacher's default workdir is the students' default teacher: the teacher run itself
    names none, so the walkthrough's first command is not refused (the run is in tests/test_docs_commands.py)."""
    from salt_jax.recipes import demo_run, test_tiny_run

    for make in (demo_run, test_tiny_run):
        assert make("teacher").salt.teacher == make("baseline").salt.teacher == ""
        assert make("salt").salt.teacher.startswith("runs/")


def test_renamed_fields_read_from_an_old_config_json_and_an_old_command_line(tmp_path, tiny_config):
    """A workdir saved before train.eval_every / data.eval_batches were renamed resumes (its config.json is
    read under the new names, and a real change is still refused), and the old --config override works."""
    from salt_jax import cli, renamed
    from salt_jax.errors import UserError
    from salt_jax.train import workdir as workdir_lib

    saved = json.loads(tiny_config.to_json_best_effort())
    saved["train"]["eval_every"] = saved["train"].pop("heldout_every")
    saved["data"]["eval_batches"] = saved["data"].pop("heldout_batches")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    workdir_lib.check_config(tiny_config, str(tmp_path))  # same config under the old names: resumes
    assert renamed.upgrade(saved)["train"]["heldout_every"] == tiny_config.train.heldout_every
    saved["optim"]["learning_rate"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match=r"config\.optim\.learning_rate"):
        workdir_lib.check_config(tiny_config, str(tmp_path))
    assert cli.renamed_overrides(["prog", "--config.train.eval_every=7", "--config.data.eval_batches", "3",
                                  "--config.train.steps=2"]) == [
        "prog", "--config.train.heldout_every=7", "--config.data.heldout_batches", "3", "--config.train.steps=2"]
