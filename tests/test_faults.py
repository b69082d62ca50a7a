"""Faults: kill -9 anywhere then resume, SIGTERM, NaN/inf policies, unreadable checkpoints."""

import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from salt_jax.data import batches as batches_lib
from salt_jax.data import store
from salt_jax.errors import UserError
from salt_jax.kd.objective import DenseLoss
from salt_jax.model import checkpoints, sharding
from salt_jax.model.transformer import Transformer
from salt_jax.train import loop, optim
from salt_jax.train import state as state_lib
from salt_jax.train.metrics import read_metrics
from salt_jax.train.step import StepPrograms, Guard

from conftest import REPO
from salt_run import cli as _cli, params as _params, same_params as _assert_same_params


def test_kill_9_at_every_phase_then_resume_gives_identical_parameters(tmp_path, cache_dir, teacher_dir, salt_reference):
    """SIGKILL mid KD phase (after step 4), at the switch (after step 7, the last KD step), while checkpoint 9
    is being written, and in phase two (after step 11); each time the same command resumes."""
    workdir = str(tmp_path / "killed")
    expect = [("step:4", 3), ("step:7", 6), ("save:9", None), ("step:11", 9)]
    for point, latest in expect:
        out = _cli(workdir, cache_dir, teacher_dir, [f"--config.train.debug_kill={point}"])
        assert out.returncode == -signal.SIGKILL, (point, out.returncode, out.stderr[-2000:])
        steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
        if latest is not None:
            assert steps[-1] == latest, (point, steps)
        else:  # killed mid-write: 9 is either complete or absent, never half there
            assert steps[-1] in (6, 9), steps
    out = _cli(workdir, cache_dir, teacher_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stdout
    _assert_same_params(_params(workdir), _params(salt_reference))
    assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d]
    ref_lines = [r for r in read_metrics(os.path.join(salt_reference, "metrics.jsonl")) if r["split"] == "eval"]
    got_lines = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "eval"]
    assert [(r["step"], r["loss"]) for r in got_lines] == [(r["step"], r["loss"]) for r in ref_lines]


def _signal_long_runs(runs, cache_dir, teacher_dir) -> list[tuple[subprocess.Popen, str]]:
    """Starts a 100000-step run per (workdir, signal), side by side; sends each its signal once it has trained
    5 steps; [(the process, its output)]."""
    procs = [(_cli(workdir, cache_dir, teacher_dir, ["--config.train.steps=100000", "--config.train.progress=true",
                                                    "--config.train.log_every=1",
                                                    "--config.train.checkpoint_every=1000"], wait=False), signum)
             for workdir, signum in runs]
    out = []
    for proc, signum in procs:
        lines = []
        for line in proc.stdout:  # wait until it trains (a run not yet read from blocks on its pipe, no harm)
            lines.append(line)
            if "step 5/" in line:
                break
        proc.send_signal(signum)
        rest, _ = proc.communicate(timeout=120)
        out.append((proc, "".join(lines) + rest))
    return out


def test_sigterm_exits_0_and_ctrl_c_exits_130_both_checkpointing_the_step_reached(tmp_path, cache_dir,
                                                                                  teacher_dir):
    """SIGTERM (a preemption notice) and SIGINT (Ctrl-C) both checkpoint the step reached; SIGTERM then exits
    0, Ctrl-C 130, neither with a traceback."""
    preempted, interrupted = str(tmp_path / "preempted"), str(tmp_path / "interrupted")
    (term, term_out), (intr, intr_out) = _signal_long_runs([(preempted, signal.SIGTERM),
                                                           (interrupted, signal.SIGINT)], cache_dir, teacher_dir)
    assert term.returncode == 0, term_out
    assert "preempted: checkpoint at step" in term_out
    step = int(term_out.split("preempted: checkpoint at step ")[1].split()[0])
    assert step >= 5
    root = os.path.join(preempted, "checkpoints")
    assert max(int(d) for d in os.listdir(root) if d.isdigit()) == step
    assert checkpoints.read_record(root, step)["step"] == step
    restored = _params(preempted, step)  # restorable
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored))
    assert not os.path.exists(os.path.join(preempted, "summary.json"))

    assert intr.returncode == 130, intr_out
    assert "Traceback" not in intr_out and "Ctrl-C received: checkpointing the step reached" in intr_out
    step = int(intr_out.split("interrupted: checkpoint at step ")[1].split()[0])
    assert step >= 5 and checkpoints.read_record(os.path.join(interrupted, "checkpoints"), step)["step"] == step
    assert not os.path.exists(os.path.join(interrupted, "summary.json"))


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, cache_dir, teacher_dir, salt_reference):
    workdir = str(tmp_path / "corrupt")
    shutil.copytree(salt_reference, workdir)
    os.remove(os.path.join(workdir, "summary.json"))
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "12", "state")):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    out = _cli(workdir, cache_dir, teacher_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "checkpoints/12 is unreadable" in log and "resuming from step 9 instead" in log, log[-3000:]
    assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr, out.stderr[-3000:]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "unreadable-12"))  # set aside, not deleted
    _assert_same_params(_params(workdir), _params(salt_reference))  # steps 10-12 re-run from checkpoint 9


def _steps(config, guard):
    mesh = sharding.make_mesh(config.mesh)
    cache, tok = store.build_store(config.data)
    model = Transformer(config.model)
    tx, sched = optim.make_optimizer(config.optim, config.train.steps)
    _, shardings = state_lib.abstract_state(model, tx, config.data.seq_len, mesh)
    st = state_lib.create_state(model, tx, config.data.seq_len, mesh, config.seed)
    steps = StepPrograms(model, tx, sched, tok.pad_id, mesh, shardings, DenseLoss(), guard)
    return st, steps, batches_lib.Batches(cache.train, config.data.batch_size, 0)


def test_a_skipped_step_leaves_parameters_and_optimizer_untouched(tiny_config):
    st, steps, batches = _steps(tiny_config, Guard(skip_nonfinite=True, nan_steps=(3,)))
    st = jax.tree.map(np.asarray, jax.device_get(st))
    history = [st]
    for s in range(4):
        new, m = steps.train(jax.device_put(history[-1]), batches.device(s, steps.batch_sharding))
        history.append(jax.device_get(new))
        assert float(m["skipped"]) == (1.0 if s == 2 else 0.0)
        assert np.isfinite(float(m["loss_sum"]))  # zeroed for the skipped step, not NaN
    before, after = history[2], history[3]  # step 3 was poisoned
    jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, after.opt_state, before.opt_state)
    assert int(after.step) == 3  # the counter advances: the data order stays step-indexed
    assert optax.tree.norm(jax.tree.map(lambda a, b: a - b, history[4].params, after.params)) > 0


def test_nan_policy_skip_finishes_and_reports_skips(tiny_config, tmp_path):
    c = tiny_config
    c.train.nan_policy, c.train.debug_nan_steps = "skip", "3,5"
    summary = loop.run(c, str(tmp_path / "skip"))
    assert np.isfinite(summary["final_eval_loss"])
    lines = {r["step"]: r for r in read_metrics(str(tmp_path / "skip" / "metrics.jsonl")) if r["split"] == "train"}
    assert lines[4]["skipped_steps"] == 1 and lines[8]["skipped_steps"] == 1 and lines[12]["skipped_steps"] == 0
    assert np.isfinite(lines[4]["loss"]) and np.isfinite(lines[4]["grad_norm"])


def test_nan_policy_stop_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
    c = tiny_config  # checkpoints at 6 and 12; NaN at step 8
    c.train.debug_nan_steps = "8"
    workdir = tmp_path / "stop"
    with pytest.raises(UserError, match=r"non-finite loss or gradients at step 8;.*checkpoint, step 6, is kept"):
        loop.run(c, str(workdir))
    assert sorted(d for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == ["6"]


def test_too_many_skips_in_a_row_stop_the_run(tiny_config, tmp_path):
    c = tiny_config
    c.train.nan_policy, c.train.max_skipped_steps, c.train.debug_nan_steps = "skip", 3, "2,3,4"
    with pytest.raises(UserError, match=r"3 steps in a row \(config.train.max_skipped_steps=3\)"):
        loop.run(c, str(tmp_path / "skips"))


def _signals_during_a_long_save(grace_s: float, *signals: str) -> subprocess.CompletedProcess:
    """A process whose checkpoint never ends receives `signals` (names) inside Preemption(grace_s); it must
    exit by itself (the 60 s timeout fails the test otherwise)."""
    sends = "".join(f"    os.kill(os.getpid(), signal.{name})\n    assert p.should_stop(sync=True)\n"
                    for name in signals)
    script = (f"import os, signal, time\nfrom salt_jax.train import faults\nwith faults.Preemption({grace_s}) as p:\n"
              f"{sends}    time.sleep(600)  # a checkpoint that does not end\n")
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_second_ctrl_c_exits_at_once_with_130():
    out = _signals_during_a_long_save(600, "SIGINT", "SIGINT")
    assert out.returncode == 130, out.stderr
    assert "second Ctrl-C: exiting now" in out.stderr


def test_preemption_grace_period_watchdog_exits_3(tmp_path):
    """A save that outlasts config.train.preemption_grace_s ends the process with status 3."""
    out = _signals_during_a_long_save(0.5, "SIGTERM")
    assert out.returncode == 3, out.stderr
    assert "preemption_grace_s" in out.stderr


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(tmp_path, tiny_config, monkeypatch):
    import errno

    import orbax.checkpoint as ocp

    real = ocp.CheckpointManager.save

    def disk_full_at_12(self, step, *args, **kwargs):
        if step == 12:  # orbax reports the OSError wrapped in its own error
            raise RuntimeError("checkpoint write failed") from OSError(errno.ENOSPC, "No space left on device")
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full_at_12)
    workdir = str(tmp_path / "full")
    with pytest.raises(UserError, match=r"checkpoints: cannot write checkpoint 12 \(No space left on device\); free "
                                        r"space or fix the disk and re-run the same command"):
        loop.run(tiny_config, workdir)
    root = os.path.join(workdir, "checkpoints")
    assert sorted(d for d in os.listdir(root) if d.isdigit()) == ["6"] and checkpoints.read_record(root, 6)["step"] == 6


def test_an_unwritable_workdir_is_one_line(tmp_path, monkeypatch):
    from salt_jax.train.workdir import Workdir

    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a non-root user on a read-only mount
    with pytest.raises(UserError, match=r"--workdir=.*ro: not writable by this user; fix its permissions"):
        Workdir(str(tmp_path / "ro")).open()


def _mount_small_tmpfs(path: str, size: str) -> bool:
    """A tmpfs of `size` at `path` (root only, and where the container allows mounts)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True).returncode == 0


def test_a_really_full_disk_stops_with_one_line_and_the_same_command_resumes(tmp_path, cache_dir, teacher_dir,
                                                                              salt_reference):
    """The reference run without its last checkpoint, on a filesystem with 256 KB to spare (a checkpoint
    needs ~0.5 MB, twice that while written): re-run, it resumes from step 9 and stops before writing
    checkpoint 12, with one line saying what is needed and what is free, checkpoint 9 intact; remounted
    read-only, it stops with one line before writing anything; copied to a disk with room, the same
    command ends with the reference run's parameters."""
    staged = tmp_path / "staged"
    shutil.copytree(salt_reference, staged, ignore=shutil.ignore_patterns("12", "summary.json"))
    used = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(staged) for f in fs)
    small = tmp_path / "small"
    small.mkdir()
    if not _mount_small_tmpfs(str(small), f"{(used >> 10) + 320}k"):  # 256 KB to spare (+64 KB: directory blocks)
        pytest.skip("cannot mount a small filesystem here (needs root); the injected ENOSPC test covers the path")
    try:
        shutil.copytree(staged, small / "run")
        full = _cli(str(small / "run"), cache_dir, teacher_dir)
        assert full.returncode == 2, full.stderr[-3000:]
        assert "Traceback" not in full.stderr, full.stderr[-3000:]
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "checkpoints: cannot write checkpoint 12 (No space left on device: " \
            "it needs about" in last and last.endswith("re-run the same command: it resumes from checkpoint 9"), last
        assert "resuming" in full.stdout
        assert "12" not in os.listdir(small / "run" / "checkpoints") and "9" in os.listdir(small / "run" / "checkpoints")
        shutil.copytree(small / "run", tmp_path / "run")
        # the same filesystem read-only (as a root user meets it too): one line before anything is written
        assert subprocess.run(["mount", "-o", "remount,ro", str(small)], capture_output=True).returncode == 0
        ro = _cli(str(small / "run"), cache_dir, teacher_dir)
        assert ro.returncode == 2 and "Traceback" not in ro.stderr, ro.stderr[-3000:]
        last = ro.stderr.strip().splitlines()[-1]
        assert last.startswith("error: --workdir=") and "not writable on a read-only filesystem" in last, last
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
    resumed = _cli(str(tmp_path / "run"), cache_dir, teacher_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "from step 9" in resumed.stdout
    _assert_same_params(_params(str(tmp_path / "run")), _params(salt_reference))


def test_two_runs_started_at_once_on_one_workdir_one_trains_the_other_stops(tmp_path, cache_dir, teacher_dir):
    """The workdir lock, raced for real: two identical commands started together; exactly one trains
    (exit 0, every metrics record once), the other stops at once with one line naming the holder."""
    workdir = str(tmp_path / "run")
    procs = [_cli(workdir, cache_dir, teacher_dir, wait=False, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-2000:] for o in outs]
    loser = next(o for p, o in zip(procs, outs) if p.returncode == 2)
    last = loser[1].strip().splitlines()[-1]
    assert last.startswith("error: ") and "in use by salt_jax pid" in last and "Traceback" not in loser[1], last
    records = [(r["split"], r["step"]) for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))]
    assert len(records) == len(set(records)) and ("eval", 12) in records
    assert sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()) == ["12", "3", "6", "9"]
