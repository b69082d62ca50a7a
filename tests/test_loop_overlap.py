"""Issue 35: the training loop's step path measured (python -m salt_jax.bench --loop), and its input path
overlapped (the next steps' batches and cached targets put on the device by the read-ahead thread) giving the
same losses and parameters as the synchronous path, across a kill and resume. No assertion on speed."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from salt_jax.data import batches as batches_lib
from salt_jax.train.metrics import read_metrics

from conftest import REPO


def test_bench_loop_reports_consistent_numbers(tmp_path, cache_dir):
    """--loop at test size: every path ran the steps asked in every timing, each ratio is the ratio of the same
    process's medians (JSON and the printed table), all positive."""
    out = tmp_path / "loop.json"
    rounds, n = 2, 2
    run = subprocess.run([sys.executable, "-m", "salt_jax.bench", "--config=configs/bench.py:test-tiny", "--loop",
                          f"--rounds={rounds}", f"--loop_steps={n}", "--config.data.batch_size=8",
                          "--config.data.seq_len=16", "--config.data.max_files=60", "--config.salt.cache_k=16",
                          "--config.train.log_every=2", f"--out={out}"], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, SALT_JAX_CACHE=cache_dir))
    assert run.returncode == 0, run.stderr[-3000:]
    lo = json.loads(out.read_text())["loop"]
    paths, timings = ("baseline", "online", "cached"), ("device", "loop_rows_ahead", "loop_device_ahead")
    assert (lo["rounds"], lo["steps"], lo["cache_k"], lo["log_every"]) == (rounds, n, 16, 2)
    for p in paths:
        for t in timings:
            assert lo["steps_run"][p][t] == rounds * n, (p, t)
            assert len(lo["step_s"][p][t]) == rounds and all(x > 0 for x in lo["step_s"][p][t])
            assert lo["median_s"][p][t] == pytest.approx(float(np.median(lo["step_s"][p][t])), rel=1e-12)
    table = {line.split(" | ")[0].lstrip("| "): line for line in run.stdout.splitlines() if line.startswith("| ")}
    for p, name in (("online", "online KD"), ("cached", "cached KD (top-16)")):
        for t in timings:
            ratio = lo["ratio"][p][t]
            assert ratio > 0 and ratio == pytest.approx(lo["median_s"][p][t] / lo["median_s"]["baseline"][t],
                                                        rel=1e-12)
        printed = table[name].strip("| ").split(" | ")
        assert printed[1:4] == [f"{lo['median_s'][p][t] * 1e3:.1f}" for t in timings]
        assert printed[4:] == [f"{lo['ratio'][p][t]:.3f}" for t in timings]


def test_prefetcher_places_each_step_in_its_thread(tmp_path, cache_dir):
    """With `place`, take() returns what the thread made of each step's rows; a step whose source changed after
    it was read ahead is read and placed again from the right source."""
    import threading

    from salt_jax.config import base_config
    from salt_jax.data import store

    c = base_config().data
    c.max_files, c.seq_len, c.cache_dir = 60, 16, cache_dir
    cache, _ = store.build_store(c)
    full = batches_lib.Batches(cache.train, 4, seed=1)
    subset = batches_lib.Batches(cache.train, 4, seed=1, rows=np.arange(0, cache.train.n_rows, 2))
    threads = []

    step3_read = threading.Event()  # (the thread has read step 3 ahead: the source change below comes after it)

    def place(step, batches, rows):
        threads.append(threading.current_thread().name)
        if step == 3 and threading.current_thread().name == "salt_jax-prefetch":
            step3_read.set()
        return ("placed", step, batches, jax.device_put(rows))

    end = {"kd": 3}
    pre = batches_lib.Prefetcher(lambda s: subset if s < end["kd"] else full, 0, 6, depth=2, place=place)
    for step in range(6):
        if step == 2:
            assert step3_read.wait(timeout=60)
            end["kd"] = 4  # too late for step 3, read ahead from `full`: read and placed again from `subset`
        want = subset if step < end["kd"] else full
        tag, got_step, source, arr = pre.take(step, want)
        assert (tag, got_step, source) == ("placed", step, want)
        np.testing.assert_array_equal(np.asarray(arr), want.numpy(step))
    pre.close()
    assert set(threads) == {"salt_jax-prefetch", threading.main_thread().name}  # (step 3 again, when taken)


FLAGS = ["--config.salt.teacher_logits=cache", "--config.salt.cache_k=16", "--config.train.checkpoint_every=4"]
TIMES = ("seconds", "per_sec", "mfu", "flops")  # fields of a line that measure time, not the run


def _lines(workdir) -> dict:
    return {(r["split"], r["step"]): {k: v for k, v in r.items() if not any(t in k for t in TIMES)}
            for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))}


def test_overlapped_input_path_gives_the_synchronous_losses_and_parameters_across_a_kill(tmp_path, cache_dir,
                                                                                       teacher_dir):
    """salt_run.RUN from cached top-16 targets: the default path (batches and targets put on the device by the
    read-ahead thread, 2 steps ahead), the synchronous one (data.prefetch=0: read and copied when the step runs),
    and the default one killed (SIGKILL) after step 6 and resumed from checkpoint 4: the same metrics lines,
    exactly, and the same parameters, bit for bit."""
    import salt_run

    sync, ahead, killed = (str(tmp_path / d) for d in ("sync", "ahead", "killed"))
    out = salt_run.cli(sync, cache_dir, teacher_dir, FLAGS + ["--config.data.prefetch=0"])
    assert out.returncode == 0, out.stdout[-3000:]
    out = salt_run.cli(ahead, cache_dir, teacher_dir, FLAGS)
    assert out.returncode == 0, out.stdout[-3000:]
    out = salt_run.cli(killed, cache_dir, teacher_dir, FLAGS + ["--config.train.debug_kill=step:6"])
    assert out.returncode == -signal.SIGKILL, out.stdout[-3000:]
    out = salt_run.cli(killed, cache_dir, teacher_dir, FLAGS)
    assert out.returncode == 0 and "from step 4" in out.stdout, out.stdout[-3000:]
    ref = _lines(sync)
    assert {k for k in ref if k[0] == "train"} == {("train", s) for s in (4, 8, 12)}
    assert any("kd_loss" in v and v["kd_loss"] for v in ref.values())  # (the KD phase's lines: cached targets read)
    for workdir in (ahead, killed):
        assert _lines(workdir) == ref, workdir
        salt_run.same_params(salt_run.params(workdir), salt_run.params(sync))
