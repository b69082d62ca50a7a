"""The Ray engine: the token store built by Ray tasks is the local build, byte for byte, and resumes the same way;
the experiment's runs as Ray tasks give the sequential pipeline's numbers; a bad --ray_address is one line.

One local Ray (2 CPUs) for the module. Ray workers inherit this process's environment (the 8 emulated
devices, the session's XLA compilation cache, PYTHONPATH), as the workers of a local Ray do.
"""

import importlib.util
import json
import logging
import os
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


def _tiny_experiment(cache_dir):
    spec = importlib.util.spec_from_file_location("exp_cfg", os.path.join(REPO, "configs", "experiments",
                                                                          "test_tiny.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    exp = mod.get_config()
    for run in (exp.teacher, exp.student):
        run.data.cache_dir, run.data.max_files, run.data.heldout_batches = cache_dir, 60, 2
        run.train.steps, run.train.heldout_every, run.train.log_every, run.train.checkpoint_every = 8, 4, 4, 4
        run.optim.warmup_steps = 2
    exp.methods, exp.seeds = "baseline,salt", "0"
    return exp


def test_the_experiment_on_ray_gives_the_sequential_numbers(tmp_path, cache_dir, ray_session, caplog):
    """The sequential experiment, then the same on Ray in a workdir holding its finished teacher (skipped) and
    its salt run cut after the step-4 checkpoint (resumed); the baseline trains from scratch on Ray."""
    import shutil

    from salt_jax.experiment import pipeline, ray_runs

    exp = _tiny_experiment(cache_dir)
    sequential = pipeline.run_experiment(exp, str(tmp_path / "sequential"))
    workdir = str(tmp_path / "ray")
    for run in ("teacher", "salt-s0"):
        shutil.copytree(tmp_path / "sequential" / run, os.path.join(workdir, run))
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
