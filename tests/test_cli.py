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
    from salt_jax.recipes import demo_run, tiny_run

    for make in (demo_run, tiny_run):
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


def _console(command: str) -> str:
    """The installed console command (setup.py's entry point), beside this interpreter."""
    return os.path.join(os.path.dirname(sys.executable), command)


@pytest.mark.parametrize("entry", ["console", "module"])
def test_a_renamed_field_on_the_command_line_trains_under_its_new_name(entry, tmp_path, cache_dir):
    """`--config.train.eval_every=3 --config.data.eval_batches=2` (the old names) through the real command:
    the run trains, evaluates every 3 steps on 2 batches, and config.json holds only the new names."""
    workdir = str(tmp_path / "run")
    args = [f"--config={os.path.join(REPO, 'configs', 'test_tiny.py')}", "--config.train.steps=6",
            "--config.train.eval_every=3", "--config.data.eval_batches=2", "--config.data.max_files=60",
            "--config.data.seq_len=32", f"--workdir={workdir}"]
    argv = [_console("salt-train")] if entry == "console" else [sys.executable, "-m", "salt_jax.main"]
    out = subprocess.run(argv + args, cwd=REPO, env=dict(os.environ, SALT_JAX_CACHE=cache_dir),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--config.train.eval_every is now --config.train.heldout_every (read as such)" in out.stderr
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["train"]["heldout_every"] == 3 and config["data"]["heldout_batches"] == 2
    assert "eval_every" not in config["train"] and "eval_batches" not in config["data"]
    evals = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))
             if json.loads(line)["split"] == "eval"]
    assert evals == [0, 3, 6]


CONFIGS = os.path.join(REPO, "configs")
RUN_EXPECTED = "takes a run config (configs/*.py, e.g. configs/demo.py:salt)"
EXPERIMENT_EXPECTED = "takes an experiment config (configs/experiments/*.py, e.g. configs/experiments/demo.py)"


def _config_files(tmp_path):
    files = {"noget.py": "x = 1\n", "raises.py": "def get_config():\n    raise ValueError('boom')\n",
             "other.py": "import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict({'a': 1})\n",
             "broken.py": "import no_such_module_here\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return {name: str(tmp_path / name) for name in files}


def test_every_config_mixup_is_one_line_naming_the_file_and_what_the_command_takes(tmp_path, capsys):
    """Each command given another command's config, a file without get_config, one whose get_config raises,
    one that does not import, an unknown :ARG or a missing file: exit 2 and the exact line."""
    from salt_jax import cli

    f = _config_files(tmp_path)
    exp, run = f"{CONFIGS}/experiments/test_tiny.py", f"{CONFIGS}/test_tiny.py"
    cases = [(command, exp, f"--config={exp}: {command} {RUN_EXPECTED}; it is an experiment config, for "
              "salt-experiment") for command in ("salt-train", "salt-prepare", "salt-teacher-cache", "salt-compile",
                                                  "salt-bench")]
    cases += [
        ("salt-experiment", f"{run}:salt", f"--config={run}:salt: salt-experiment {EXPERIMENT_EXPECTED}; it is a run "
         "config, for salt-train"),
        ("salt-train", f["noget.py"], f"--config={f['noget.py']}: the file has no get_config(); a config file defines "
         f"get_config() returning an ml_collections.ConfigDict: salt-train {RUN_EXPECTED}"),
        ("salt-train", f["raises.py"], f"--config={f['raises.py']}: get_config() raised ValueError: boom; fix the file"),
        ("salt-train", f["broken.py"], f"--config={f['broken.py']}: loading the file raised ModuleNotFoundError: No "
         "module named 'no_such_module_here'; fix the file"),
        ("salt-experiment", f["other.py"], f"--config={f['other.py']}: salt-experiment {EXPERIMENT_EXPECTED}; it "
         "lacks teacher, student, methods, seeds"),
        ("salt-train", f"{run}:nosuch", f"--config={run}:nosuch: config variant 'nosuch': use one of "),
        ("salt-experiment", f"{CONFIGS}/experiments/demo.py:nosuch", f"--config={CONFIGS}/experiments/demo.py:nosuch:"
         " get_config('nosuch') raised ValueError: configs/experiments/demo.py:nosuch: use paper_regime (the "
         "default) or first_pair; check the :ARG"),
        ("salt-experiment", f"{exp}:x", f"--config={exp}:x: its get_config() takes no argument; drop ':x'"),
        ("salt-train", f"{CONFIGS}/no_such.py", f"--config={CONFIGS}/no_such.py: no such file; pass an existing "
         f"config file: salt-train {RUN_EXPECTED}"),
    ]
    for command, spec, message in cases:
        with pytest.raises(SystemExit) as stop:
            cli.check_config_file(["prog", f"--config={spec}", "--workdir=w"], command)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {message}"), (command, spec, err)
    for command, spec in [("salt-train", f"{run}:salt"), ("salt-experiment", exp), ("salt-bench", f"{CONFIGS}/bench.py")]:
        cli.check_config_file(["prog", "--config", spec], command)  # the right kind: no exit


def test_an_experiment_config_given_to_salt_train_with_overrides_is_one_line(tmp_path):
    """Through the command line, with an override the wrong config does not have (which ml_collections would
    report as a missing field): the line says what the command takes, and nothing is created."""
    workdir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "salt_jax.main", f"--config={CONFIGS}/experiments/test_tiny.py",
                          "--config.train.steps=3", f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        f"error: --config={CONFIGS}/experiments/test_tiny.py: salt-train {RUN_EXPECTED}; it is an experiment "
        "config, for salt-experiment"]
    assert not workdir.exists()
