"""The Ray engine: the token store built by Ray tasks is the local build, byte for byte, and resumes the same way;
the experiment's runs as Ray tasks give the sequential pipeline's numbers; a bad --ray_address is one line.

One local Ray (2 CPUs) for the module. Ray workers inherit this process's environment (the 8 emulated
devices, the session's XLA compilation cache, PYTHONPATH), as the workers of a local Ray do.
"""

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

ray = pytest.importorskip("ray", reason='Ray is an extra: pip install -e ".[ray]"')


@pytest.fixture(scope="module")
def ray_session(cache_dir):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    yield
    ray.shutdown()


def _files(directory):
    return {f: open(os.path.join(directory, f), "rb").read() for f in sorted(os.listdir(directory))}


def test_the_ray_build_is_the_local_build_byte_for_byte_and_resumes(tmp_path, ray_session, caplog):
    from salt_jax.config import base_config
    from salt_jax.data import ray_engine, store

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in range(3):
        with open(corpus / f"{f}.jsonl", "w") as fh:
            for i in range(300):
                fh.write(json.dumps({"text": f"doc {f}.{i} " + "lorem ipsum é " * (i % 40 + 3)}) + "\n")

    def cfg(cache):
        c = base_config().data
        c.source, c.path, c.cache_dir, c.max_files, c.shard_chars = "text", str(corpus), str(tmp_path / cache), 0, 12000
        return c

    local, _ = store.build_store(cfg("local"), workers=2)
    with caplog.at_level(logging.INFO):
        built, _ = store.build_store(cfg("ray"), engine=ray_engine.RayEngine(2))
    assert len(local.meta["splits"]["train"]["shards"]) >= 8 and len(local.meta["splits"]["heldout"]["shards"]) >= 3
    assert built.meta == local.meta  # every shard's tokens, every split's counts
    assert _files(built.directory) == _files(local.directory)  # every shard file, its record and meta.json
    assert any(m.startswith("token store train: ") and "tokens/s, ETA 0s" in m for m in caplog.messages)

    # an interrupted build: the partial directory without meta.json and with some shards (and records) missing
    partial = built.directory + ".partial"
    os.rename(built.directory, partial)
    os.remove(os.path.join(partial, "meta.json"))
    lost = ["train-00001.bin", "train-00004.bin", "heldout-00000.bin"]
    for name in lost:
        os.remove(os.path.join(partial, name))
        os.remove(os.path.join(partial, name + ".json"))
    kept = {f: os.stat(os.path.join(partial, f)).st_mtime_ns for f in os.listdir(partial)}
    resumed, _ = store.build_store(cfg("ray"), engine=ray_engine.RayEngine(2))
    assert resumed.directory == built.directory and not os.path.exists(partial)
    rewritten = {f for f in os.listdir(resumed.directory)
                 if f not in kept or os.stat(os.path.join(resumed.directory, f)).st_mtime_ns != kept[f]}
    assert rewritten == {*lost, *(f + ".json" for f in lost), "meta.json"}
    assert _files(resumed.directory) == _files(local.directory)

    # a user's mistake found inside a Ray task is raised here as itself: one line at the command line
    from salt_jax.errors import UserError

    with open(corpus / "3.jsonl", "w") as fh:
        fh.write('{"body": "x"}\n{"body": "y"}\n')
    with pytest.raises(UserError, match=r"3.jsonl: none of its 2 records has the field 'text'"):
        store.build_store(cfg("bad"), engine=ray_engine.RayEngine(2))


# configs/experiments/test_tiny.py at test size: these fields of its teacher and student runs, 2 methods, 1 seed
TINY = {"data.max_files": 60, "data.heldout_batches": 2, "train.steps": 8, "train.heldout_every": 4,
        "train.log_every": 4, "train.checkpoint_every": 4, "optim.warmup_steps": 2}


def _tiny_experiment(cache_dir):
    spec = importlib.util.spec_from_file_location("exp_cfg", os.path.join(REPO, "configs", "experiments",
                                                                          "test_tiny.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    exp = mod.get_config()
    for run in (exp.teacher, exp.student):
        run.data.cache_dir = cache_dir
        for field, value in TINY.items():
            section, name = field.split(".")
            run[section][name] = value
    exp.methods, exp.seeds = "baseline,salt", "0"
    return exp


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, cache_dir):
    """The tiny experiment run by the sequential pipeline: (workdir, results)."""
    from salt_jax.experiment import pipeline

    workdir = str(tmp_path_factory.mktemp("sequential"))
    return workdir, pipeline.run_experiment(_tiny_experiment(cache_dir), workdir)


def test_the_experiment_on_ray_gives_the_sequential_numbers(tmp_path, cache_dir, ray_session, sequential, caplog):
    """The sequential experiment, then the same on Ray in a workdir holding its finished teacher (skipped) and
    its salt run cut after the step-4 checkpoint (resumed); the baseline trains from scratch on Ray."""
    import shutil

    from salt_jax.experiment import pipeline, ray_runs

    exp = _tiny_experiment(cache_dir)
    sequential_dir, sequential = sequential
    workdir = str(tmp_path / "ray")
    for run in ("teacher", "salt-s0"):
        shutil.copytree(os.path.join(sequential_dir, run), os.path.join(workdir, run))
    os.remove(os.path.join(workdir, "salt-s0", "summary.json"))
    shutil.rmtree(os.path.join(workdir, "salt-s0", "checkpoints", "8"))
    with caplog.at_level(logging.INFO):
        caplog.clear()
        on_ray = pipeline.run_experiment(exp, workdir, ray_runs.RayRunner(exp))
    for method in ("baseline", "salt"):
        a, b = sequential["methods"][method], on_ray["methods"][method]
        assert b["steps"] == a["steps"] == [0, 4, 8]
        assert b["eval_loss_mean"] == a["eval_loss_mean"]  # bit-identical: the same programs on the same machine
        assert b["reach_step"] == a["reach_step"] and b["at_fraction"] == a["at_fraction"]
    assert on_ray["target_loss"] == sequential["target_loss"] and on_ray["conclusion"] == sequential["conclusion"]
    assert json.load(open(os.path.join(workdir, "results.json")))["methods"] == json.loads(
        json.dumps(on_ray["methods"]))
    progress = [m for m in caplog.messages if m.startswith("[")]  # one line per run on the driver
    assert len(progress) == 3 and progress[0] == f"[teacher] already finished in {workdir}/teacher: skipped"
    assert sorted(m.split(" finished in ")[0] for m in progress[1:]) == ["[baseline seed 0]", "[salt seed 0]"]
    assert all(m.endswith("train.log") for m in progress[1:])
    assert "resuming" in open(os.path.join(workdir, "salt-s0", "train.log")).read()  # each run's own log lines
    assert "[baseline seed 0] training in" in open(os.path.join(workdir, "baseline-s0", "train.log")).read()


# results.json's fields that measure time (seconds, and fractions or ratios of seconds): they differ between
# any two runs of the same experiment, because the machine is shared and the clock is not part of what is
# computed. Everything else (every loss at every evaluated step, accuracies, reach steps, compute, the
# conclusion) is a pure function of the config, so it must be equal.
TIME_FIELDS = {"train_seconds_mean", "reach_seconds", "reach_time_fraction", "kd_seconds_per_step",
               "kd_step_time_ratio", "baseline_train_seconds", "baseline_seconds_per_step"}


def _without_time(results, workdir):
    """results.json with TIME_FIELDS dropped (checked present) and the workdir's path as WORKDIR."""
    found = set()

    def strip(x):
        if isinstance(x, dict):
            found.update(TIME_FIELDS & set(x))
            return {k: strip(v) for k, v in x.items() if k not in TIME_FIELDS}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x.replace(workdir, "WORKDIR") if isinstance(x, str) else x
    out = strip(results)
    assert found == TIME_FIELDS, f"results.json no longer has {TIME_FIELDS - found}: update TIME_FIELDS"
    return out


def test_the_experiment_command_on_ray_writes_the_sequential_results(tmp_path, cache_dir, ray_session, sequential):
    """`python -m salt_jax.experiment --engine=ray` through its command line, in a process of its own joining this
    module's local Ray (2 CPUs) with --ray_address: its results.json is the sequential run's, but for the time
    fields (TIME_FIELDS) and meta.concurrent_runs (true: the runs trained at once, which the report says); each
    run trained in a Ray task (its train.log), one line per finished run."""
    sequential_dir, _ = sequential
    workdir = str(tmp_path / "cli")
    overrides = [f"--config.{run}.{field}={value}" for run in ("teacher", "student")
                 for field, value in {**TINY, "data.cache_dir": cache_dir}.items()]
    cmd = [sys.executable, "-m", "salt_jax.experiment", "--config=configs/experiments/test_tiny.py",
           f"--workdir={workdir}", "--engine=ray", f"--ray_address={ray.get_runtime_context().gcs_address}",
           "--config.methods=baseline,salt", "--config.seeds=0", *overrides]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    finished = sorted(re.findall(r"\[([\w ]+)\] finished in \d+s on ", out.stdout))
    assert finished == ["baseline seed 0", "salt seed 0", "teacher"], out.stdout
    for run in ("teacher", "baseline-s0", "salt-s0"):
        assert "training in" in open(os.path.join(workdir, run, "train.log")).read(), run
    cli, seq = (json.load(open(os.path.join(d, "results.json"))) for d in (workdir, sequential_dir))
    assert cli["methods"]["salt"]["eval_loss_mean"] == seq["methods"]["salt"]["eval_loss_mean"]  # (the losses)
    assert (cli["meta"].pop("concurrent_runs"), seq["meta"].pop("concurrent_runs")) == (True, False)  # (how)
    assert _without_time(cli, workdir) == _without_time(seq, sequential_dir)


def test_ray_resources_a_missing_ray_and_a_bad_address_are_one_line(tmp_path, monkeypatch):
    import ml_collections

    from salt_jax.data import ray_engine
    from salt_jax.errors import UserError
    from salt_jax.experiment import ray_runs

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "ray", None)  # not installed
        with pytest.raises(UserError, match=r'^Ray is not installed; install the extra: pip install -e "\.\[ray\]"$'):
            ray_engine.ray_module()

    exp = ml_collections.ConfigDict({"ray_resources": "num_cpus=2,TPU=4"})
    assert ray_runs.resources(exp) == {"num_cpus": 2.0, "resources": {"TPU": 4.0}}
    assert ray_runs.resources(ml_collections.ConfigDict()) == {"num_cpus": 1.0, "resources": {}}  # (an old config)
    with pytest.raises(UserError, match=r"config.ray_resources: num_gpus='one' is not a number"):
        ray_runs.resources(ml_collections.ConfigDict({"ray_resources": "num_gpus=one"}))
    cmd = [sys.executable, "-m", "salt_jax.prepare", "--config=configs/test_tiny.py", "--engine=ray",
           "--ray_address=127.0.0.1:1", f"--config.data.cache_dir={tmp_path}"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: --ray_address=127.0.0.1:1: no Ray cluster answers there (Connection refused); start one with "
        "`ray start --head` or leave the flag out for a local Ray"], out.stderr
