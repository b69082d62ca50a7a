"""Weights & Biases (config.logging.wandb): W&B's history is metrics.jsonl's scalars, across a kill and resume.

Offline mode, read back from the `.wandb` files W&B writes (salt_jax.train.wandb_log.history).
"""

import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from salt_jax.config import base_config, validate
from salt_jax.errors import UserError
from salt_jax.train import wandb_log
from salt_jax.train.metrics import MetricsWriter, read_metrics

from conftest import REPO

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

# The wall-clock fields of a train line: a step W&B got from the killed process keeps that process's timings.
CLOCK = {"train_seconds", "tokens_per_sec", "steps_per_sec", "model_tflops_per_sec", "mfu", "mfu_with_teacher"}
RUN = {"data.seq_len": 32, "data.max_files": 60, "data.heldout_batches": 2, "train.steps": 16, "train.log_every": 2,
       "train.heldout_every": 4, "train.checkpoint_every": 6, "train.keep_checkpoints": 5, "train.progress": False,
       "optim.warmup_steps": 2, "logging.wandb": True, "logging.wandb_mode": "offline"}


def _env(tmp_path, cache_dir, **more):
    return dict(os.environ, SALT_JAX_CACHE=cache_dir, WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb_root"),
                WANDB_SILENT="true", WANDB__DISABLE_STATS="true", **more)


def _cli(workdir, env, extra=()):
    args = [sys.executable, "-m", "salt_jax.main", f"--config={os.path.join(REPO, 'configs', 'test_tiny.py')}",
            f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in RUN.items()] + list(extra)
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _expected(workdir) -> dict[int, dict]:
    """metrics.jsonl's scalars by step, keyed as W&B has them ("train/loss", "eval/loss", ...)."""
    out: dict[int, dict] = {}
    for r in read_metrics(os.path.join(workdir, "metrics.jsonl")):
        out.setdefault(r["step"], {}).update(wandb_log.scalars(r["split"], {k: v for k, v in r.items()
                                                                             if k not in ("step", "split")}))
    return out


def _same(got: dict, want: dict, skip=frozenset()) -> None:
    got = {k: v for k, v in got.items() if not k.startswith("_") and k.split("/", 1)[1] not in skip}
    want = {k: v for k, v in want.items() if k.split("/", 1)[1] not in skip}
    assert sorted(got) == sorted(want)
    np.testing.assert_array_equal(np.float32([got[k] for k in sorted(got)]),
                                  np.float32([want[k] for k in sorted(want)]))


def _close(writer: MetricsWriter) -> None:
    """Closes the writer and waits until W&B has written its files (run.finish() returns before; a process
    waits for them at exit, as wandb.teardown() does)."""
    writer.close()
    wandb.teardown()


def _writer(workdir, wandb_dir, resume_step=0) -> MetricsWriter:
    c = base_config()
    c.logging.wandb, c.logging.wandb_mode, c.logging.wandb_dir = True, "offline", wandb_dir
    return MetricsWriter(workdir, resume_step=resume_step, config=c)


def test_history_is_metrics_jsonl_once_per_step_across_a_kill_and_resume(tmp_path, cache_dir):
    """Killed after step 9 (checkpoint 6; lines at 8 logged after it), then resumed: the run's W&B history
    over both processes' files holds every step of metrics.jsonl exactly once, with its values."""
    workdir = str(tmp_path / "run")
    # (the killed process flushes its .wandb file every 0.05 s, not 15: W&B then holds some of its steps)
    killed = _cli(workdir, _env(tmp_path, cache_dir, WANDB__TRANSACTION_LOG_FLUSH_INTERVAL="0.05"),
                  ["--config.train.debug_kill=step:9"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _cli(workdir, _env(tmp_path, cache_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout + resumed.stderr

    ident = open(os.path.join(workdir, "wandb_run_id")).read().strip()
    files = wandb_log.local_files(str(tmp_path / "wandb_root"), ident)
    assert len(files) == 2, files  # one per process, the same W&B run
    first, second = (wandb_log.history(p) for p in files)
    steps = [row["_step"] for row in first + second]
    assert steps == sorted(set(steps)), steps  # each step once, in order, over both processes
    want = _expected(workdir)
    assert steps == sorted(want), (steps, sorted(want))
    killed_through = max([row["_step"] for row in first], default=-1)
    for row in first + second:
        step = row["_step"]
        # steps past checkpoint 6 that W&B got from the killed process: its timings, the same losses
        _same(row, want[step], CLOCK if 6 < step <= killed_through else frozenset())
    assert {"train/loss", "train/kd_weight", "train/learning_rate", "eval/loss", "eval/accuracy"} <= set(second[-1])

    config = {}  # wandb.config: the resolved config, as config.json holds it
    for data in wandb_log._log_records(files[1]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "run":
            config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
    config.pop("_wandb")
    with open(os.path.join(workdir, "config.json")) as fh:
        assert config == json.load(fh)


def test_keys_by_split_nested_flattened_non_numbers_left_out(tmp_path, monkeypatch):
    """One step's train, eval (with a per-corpus part) and few-shot records make one W&B row."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB__DISABLE_STATS", "true")
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    writer = _writer(workdir, str(tmp_path / "w"))
    writer.write("eval", 0, {"loss": 5.5, "accuracy": 0.0})
    writer.write("train", 4, {"loss": 1.25, "kd_loss": None, "mfu": float("nan"), "skipped_steps": 0, "note": "x"})
    writer.write("eval", 4, {"loss": 2.5, "corpora": {"stdlib": {"loss": 2.75}}})
    writer.write("fewshot", 4, {"stdlib_identifier/acc": 0.25, "stdlib_identifier/acc_stderr": 0.03})
    _close(writer)
    ident = open(os.path.join(workdir, "wandb_run_id")).read().strip()
    rows = wandb_log.local_history(str(tmp_path / "w"), ident)
    assert [r["_step"] for r in rows] == [0, 4]
    assert {k: v for k, v in rows[1].items() if not k.startswith("_")} == {
        "train/loss": 1.25, "train/skipped_steps": 0, "eval/loss": 2.5, "eval/corpora/stdlib/loss": 2.75,
        "fewshot/stdlib_identifier/acc": 0.25, "fewshot/stdlib_identifier/acc_stderr": 0.03}
    _same(rows[1], _expected(workdir)[4])


def test_a_restarted_writer_sends_what_wandb_lacks_and_nothing_it_holds(tmp_path, monkeypatch):
    """Deterministic halves of the kill drill: W&B holds steps past the checkpoint (a killed process flushed
    them; they are not sent again), or holds nothing (they come from metrics.jsonl up to the checkpoint)."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB__DISABLE_STATS", "true")
    line = lambda step, seconds: {"loss": 10.0 - step, "train_seconds": seconds}  # noqa: E731
    for case in ("holds", "lacks"):
        workdir, wandb_dir = str(tmp_path / case), str(tmp_path / case / "w")
        os.makedirs(workdir)
        first = _writer(workdir, wandb_dir)
        for step in (0, 2, 4, 6, 8):
            first.write("train", step, line(step, 1.0))
        _close(first)
        ident = open(os.path.join(workdir, "wandb_run_id")).read().strip()
        if case == "lacks":  # as if the process had been killed before W&B wrote anything
            for path in glob.glob(os.path.join(wandb_dir, "wandb", f"*-{ident}")):
                with open(os.path.join(path, f"run-{ident}.wandb"), "wb") as fh:
                    fh.write(b":W&B\xe1\xbe\x00")
        again = _writer(workdir, wandb_dir, resume_step=4)  # metrics.jsonl keeps 0-4; 6 and 8 are trained again
        for step in (6, 8, 10):
            again.write("train", step, line(step, 2.0))
        _close(again)
        rows = wandb_log.local_history(wandb_dir, ident)
        assert [r["_step"] for r in rows] == [0, 2, 4, 6, 8, 10], case
        assert [r["train/train_seconds"] for r in rows] == ([1.0] * 5 + [2.0] if case == "holds" else
                                                             [1.0] * 3 + [2.0] * 3), case
        assert [r["train/loss"] for r in rows] == [10.0 - s for s in (0, 2, 4, 6, 8, 10)]
        assert [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))] == [0, 2, 4, 6, 8, 10]


def test_without_wandb_installed_and_a_bad_mode_are_one_line_errors(tmp_path, monkeypatch):
    c = base_config()
    c.logging.wandb = True
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(UserError, match=r"^config\.logging\.wandb=true needs wandb: pip install -e '\.\[wandb\]'$"):
        MetricsWriter(str(tmp_path), config=c)
    c.logging.wandb_mode = "sometimes"
    with pytest.raises(UserError, match=r"^config\.logging\.wandb_mode='sometimes': use 'online', 'offline' or"):
        validate(c)
