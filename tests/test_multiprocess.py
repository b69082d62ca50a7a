"""Two processes on localhost (JAX's distributed runtime, Gloo CPU collectives, 4 devices each) train
the same SALT run as one process with 8 devices, through both phases, to the same numbers."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from salt_jax.errors import UserError
from salt_jax import distributed
from salt_jax.train.metrics import read_metrics

import salt_run


@pytest.mark.parametrize("method", ["salt", "salt_ds"])
def test_two_processes_match_one_process(method, tmp_path, cache_dir, teacher_dir, salt_reference):
    """salt: both phases; salt_ds also scores the pool with the teacher (each process its rows) and
    trains the KD phase on the selected sequences, from a token store in a fresh shared cache that the
    two processes build together (shards 0, 2, ... by process 0 and 1, 3, ... by process 1)."""
    extra = [f"--config.salt.method={method}"]
    shared = str(tmp_path / "shared-cache")
    reference = salt_reference
    if method == "salt_ds":
        reference = str(tmp_path / "one")
        out = salt_run.cli(reference, cache_dir, teacher_dir, extra)
        assert out.returncode == 0, out.stderr[-3000:]
    workdir = str(tmp_path / "two")
    env = dict(os.environ, XLA_FLAGS=salt_run.FOUR_DEVICES)
    if method == "salt_ds":
        extra += [f"--config.data.cache_dir={shared}", "--config.data.shared_cache=true",
                  "--config.data.shard_chars=100000"]
    outs = salt_run.two_processes(workdir, cache_dir, teacher_dir, extra)
    assert "process 0 of 2; 4 local / 8 global devices" in outs[0]
    assert "process 1 of 2; 4 local / 8 global devices" in outs[1]

    one = read_metrics(os.path.join(reference, "metrics.jsonl"))
    two = read_metrics(os.path.join(workdir, "metrics.jsonl"))  # written by process 0 only: no duplicates
    assert [(r["split"], r["step"]) for r in two] == [(r["split"], r["step"]) for r in one]
    for a, b in zip(one, two):
        for key in ("loss", "kd_loss", "kd_weight", "accuracy"):
            if a.get(key) is not None:
                # the all-reduces run in another order (Gloo across processes): float32 rounding only
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["split"], a["step"], key)
    kd = [r for r in two if r["split"] == "train"]
    assert kd[0]["kd_weight"] > 0 and kd[-1]["kd_weight"] == 0  # both phases ran
    p1, p2 = salt_run.params(reference), salt_run.params(workdir)
    # float32 rounding of the all-reduces, carried through 12 AdamW updates: Adam divides by sqrt(v), so an
    # entry whose gradients are near 0 moves by up to ~lr x its relative rounding (3.8e-6 seen for one of
    # 8288 embedding entries on an AMD EPYC host); a real divergence moves whole tensors by far more
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), p1, p2)
    if method == "salt_ds":
        (store_dir,) = [d for d in os.listdir(os.path.join(shared, "tokens")) if "." not in d]
        with open(os.path.join(shared, "tokens", store_dir, "meta.json")) as fh:
            assert len(json.load(fh)["splits"]["train"]["shards"]) >= 4
        assert "token store written" in outs[0] and "token store written" not in outs[1]  # process 0 completed it
        with open(os.path.join(reference, "selection.json")) as f1, open(os.path.join(workdir, "selection.json")) as f2:
            sel1, sel2 = json.load(f1), json.load(f2)
        assert sel2["kept"] == sel1["kept"] > 0 and sel2["pool"] == sel1["pool"]
        for q in ("p10", "p50", "p90"):  # the same teacher scores, computed on two hosts' rows
            assert sel2["score_quantiles_kept"][q] == pytest.approx(sel1["score_quantiles_kept"][q], rel=1e-5)
        return

    # the 2-host checkpoint at step 6 (mid KD phase) resumes in one process with 4 devices
    for step in ("9", "12"):
        shutil.rmtree(os.path.join(workdir, "checkpoints", step))
    os.remove(os.path.join(workdir, "summary.json"))
    out = salt_run.cli(workdir, cache_dir, teacher_dir, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stdout and "4 devices" in out.stdout
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, salt_run.params(workdir))


def test_two_hosts_build_one_teacher_cache_that_one_host_then_reads(tmp_path, teacher_dir, salt_reference):
    """teacher_logits=cache on two processes: each writes its rows of every KD step (rows 0-4 and 4-8),
    process 0 the manifest; the run matches the online reference. One process with 8 devices then trains
    from the same files (its rows span both hosts' files) to the same numbers, without rebuilding."""
    flags = ["--config.salt.teacher_logits=cache", "--config.salt.cache_targets=topk_other",
             "--config.salt.cache_k=259", "--config.salt.cache_dtype=float32"]
    shared = str(tmp_path / "shared-cache")
    extra = flags + [f"--config.data.cache_dir={shared}", "--config.data.shared_cache=true",
                     "--config.data.shard_chars=100000"]
    two = str(tmp_path / "two")
    salt_run.two_processes(two, shared, teacher_dir, extra)
    with open(os.path.join(two, "teacher_cache.json")) as fh:
        cache = json.load(fh)
    files = sorted(f for f in os.listdir(cache["directory"]) if f.endswith(".npz"))
    assert files == sorted(f"step{s:07d}-rows{r}.npz" for s in range(7) for r in ("0-4", "4-8"))
    assert cache["hosts"] == 2 and cache["steps"] == 7

    one = str(tmp_path / "one")
    out = salt_run.cli(one, shared, teacher_dir, extra)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "teacher cache: resuming" not in out.stdout and "steps in" not in out.stdout  # read, not rebuilt
    assert "parameters, fingerprint" not in out.stdout  # and the teacher's parameters never restored
    ref = read_metrics(os.path.join(salt_reference, "metrics.jsonl"))
    for run in (two, one):
        got = read_metrics(os.path.join(run, "metrics.jsonl"))
        assert [(r["split"], r["step"]) for r in got] == [(r["split"], r["step"]) for r in ref]
        for a, b in zip(ref, got):
            for key in ("loss", "kd_loss", "accuracy"):
                if a.get(key) is not None:  # online vs cached logits, and Gloo's reduction order: rounding only
                    assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-6), (run, a["split"], a["step"], key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), salt_run.params(two),
                 salt_run.params(one))


def test_distributed_arguments_from_flags_environment_or_cluster():
    assert distributed.resolve(env={}) is None  # one process: nothing to join
    assert distributed.resolve("h:1", 2, 1, env={}) == {"coordinator_address": "h:1", "num_processes": 2,
                                                      "process_id": 1}
    env = {"SALT_JAX_COORDINATOR": "10.0.0.2:8476", "SALT_JAX_NUM_PROCESSES": "4", "SALT_JAX_PROCESS_ID": "3"}
    assert distributed.resolve(env=env) == {"coordinator_address": "10.0.0.2:8476", "num_processes": 4,
                                            "process_id": 3}
    assert distributed.resolve(env={"SLURM_NTASKS": "16"}) == {}  # JAX detects SLURM itself
    assert distributed.resolve(env={"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}) == {}
    assert distributed.resolve(env={"TPU_WORKER_HOSTNAMES": "w0", "SLURM_NTASKS": "1"}) is None
    with pytest.raises(UserError, match="go together"):
        distributed.resolve("h:1", None, 0, env={})
    with pytest.raises(UserError, match=r"--process_id=2: must be in \[0, --num_processes=2\)"):
        distributed.resolve("h:1", 2, 2, env={})
