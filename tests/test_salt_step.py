"""The fused KD step, the phase switch, the teacher's isolation, resume across the switch."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from salt_jax.config import set_method
from salt_jax.data import batches as batches_lib
from salt_jax.data import store
from salt_jax.errors import UserError
from salt_jax.kd.objective import ChunkedLoss, DenseLoss
from salt_jax.kd import schedules
from salt_jax.kd.schedules import KDPhase
from salt_jax.kd.teacher import load_teacher
from salt_jax.model import checkpoints, sharding
from salt_jax.model.flops import flops_per_token
from salt_jax.model.transformer import Transformer
from salt_jax.train import loop, optim
from salt_jax.train import state as state_lib
from salt_jax.train.metrics import read_metrics
from salt_jax.train.step import StepPrograms, make_objective, make_train_step

from conftest import REPO


@pytest.fixture
def student_config(tiny_config, teacher_dir):
    c = tiny_config
    set_method(c, "salt")
    c.salt.teacher = teacher_dir
    c.salt.kd_steps = 7
    return c


def _pieces(config, mesh=None):
    mesh = mesh or sharding.make_mesh(config.mesh)
    cache, tok = store.build_store(config.data)
    teacher = load_teacher(config.salt, config.model, tok.fingerprint(), mesh)
    model = Transformer(config.model)
    tx, sched = optim.make_optimizer(config.optim, config.train.steps)
    _, shardings = state_lib.abstract_state(model, tx, config.data.seq_len, mesh)
    st = state_lib.create_state(model, tx, config.data.seq_len, mesh, config.seed)
    batches = batches_lib.Batches(cache.train, config.data.batch_size, 0)
    return mesh, teacher, model, tx, sched, shardings, st, batches


def _phase(config, weight=None) -> KDPhase:
    phase = KDPhase.from_config(schedules.resolved(config.salt, config.train.steps), config.train.steps,
                                config.data.batch_size)
    return phase if weight is None else dataclasses.replace(phase, weight=weight)


def _kd_step(config, model, teacher, tx, sched, weight=None):
    return make_train_step(model, tx, sched, 0, DenseLoss(config.salt), teacher_model=teacher.model,
                           phase=_phase(config, weight))


def _objective(config, model, teacher, loss=None):
    """The SALT step's objective (params, teacher_input, state, tokens) -> (loss, sums)."""
    return make_objective(model, loss or DenseLoss(config.salt), 0, teacher_model=teacher.model,
                          phase=_phase(config))


def test_no_gradient_reaches_the_teacher_and_it_never_changes(student_config):
    mesh, teacher, model, tx, sched, shardings, st, batches = _pieces(student_config)
    objective = _objective(student_config, model, teacher)
    tokens = batches.numpy(0)
    g = jax.jit(jax.grad(objective, argnums=1, has_aux=True))(st.params, teacher.params, st, tokens)[0]
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(g))
    g_student = jax.jit(jax.grad(objective, has_aux=True))(st.params, teacher.params, st, tokens)[0]
    assert optax.tree.norm(g_student) > 0

    before = jax.device_get(teacher.params)
    steps = StepPrograms(model, tx, sched, 0, mesh, shardings, DenseLoss(student_config.salt), teacher=teacher,
                          phase=_phase(student_config))
    for s in range(8):
        st, m = steps.train(st, jax.device_put(batches.numpy(s), steps.batch_sharding), teacher.params)
    jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(teacher.params))
    assert float(m["kd_sum"]) > 0 and float(m["teacher_ntp_sum"]) > 0


def test_kd_step_with_zero_weight_equals_the_baseline_step(student_config):
    _, teacher, model, tx, sched, _, st, batches = _pieces(student_config)
    tokens = batches.numpy(0)
    zero = _kd_step(student_config, model, teacher, tx, sched, weight=optax.constant_schedule(0.0))
    kd_state, kd_m = jax.jit(zero)(st, tokens, teacher.params)
    base_state, base_m = jax.jit(make_train_step(model, tx, sched, 0, DenseLoss()))(st, tokens)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
                 jax.device_get(kd_state.params), jax.device_get(base_state.params))
    assert float(kd_m["loss"]) == pytest.approx(float(base_m["loss"]), rel=1e-6)


def test_token_selection_that_keeps_every_token_equals_plain_kd(student_config):
    _, teacher, model, tx, sched, _, st, batches = _pieces(student_config)
    tokens = batches.numpy(1)
    plain_state, plain_m = jax.jit(_kd_step(student_config, model, teacher, tx, sched))(st, tokens, teacher.params)
    student_config.salt.token_select, student_config.salt.token_select_threshold = "confidence", -1.0
    sel_state, sel_m = jax.jit(_kd_step(student_config, model, teacher, tx, sched))(st, tokens, teacher.params)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(plain_state.params), jax.device_get(sel_state.params))
    assert float(sel_m["kd_tokens"]) == float(sel_m["tokens"])
    # a real selection keeps fewer tokens and changes the update
    student_config.salt.token_select, student_config.salt.token_select_k = "topk", 2
    top_state, top_m = jax.jit(_kd_step(student_config, model, teacher, tx, sched))(st, tokens, teacher.params)
    assert 0 < float(top_m["kd_tokens"]) < float(top_m["tokens"])
    assert float(top_m["loss"]) != float(plain_m["loss"])


def test_chunked_kd_step_equals_the_dense_step(student_config):
    """The whole SALT step (tied-embedding teacher, untied student) with the chunked loss vs dense logits."""
    from salt_jax.kd.chunked_loss import LossOptions

    c = student_config
    c.salt.kd_loss, c.salt.temperature, c.salt.token_select, c.salt.token_select_k = "reverse_kl", 2.0, "topk", 3
    _, teacher, model, tx, sched, _, st, batches = _pieces(c)
    tokens = batches.numpy(2)
    opts = LossOptions(chunk=5, temperature=2.0, kd_loss="reverse_kl", token_select="topk", token_select_k=3)
    chunked = _objective(c, model, teacher, ChunkedLoss(opts))
    dense = _objective(c, model, teacher)
    (lc, mc), gc = jax.jit(jax.value_and_grad(chunked, has_aux=True))(st.params, teacher.params, st, tokens)
    (ld, md), gd = jax.jit(jax.value_and_grad(dense, has_aux=True))(st.params, teacher.params, st, tokens)
    assert float(lc) == pytest.approx(float(ld), rel=1e-6)
    for key in ("ntp_sum", "kd_sum", "kd_tokens", "teacher_ntp_sum", "correct"):
        assert float(mc[key]) == pytest.approx(float(md[key]), rel=1e-5), key
    assert 0 < float(mc["kd_tokens"]) < float(mc["tokens"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), gc, gd)  # embed, lm_head, layers


def test_teacher_held_in_bfloat16(student_config):
    mesh, teacher, *_ , batches = _pieces(student_config)
    student_config.salt.teacher_dtype = "bfloat16"
    half = load_teacher(student_config.salt, student_config.model, teacher.tokenizer, mesh)
    assert {x.dtype for x in jax.tree.leaves(half.params)} == {np.dtype("bfloat16")}
    assert half.fingerprint == teacher.fingerprint
    inputs = batches.numpy(0)[:, :-1]
    full = jax.jit(teacher.model.apply)({"params": teacher.params}, inputs)
    low = jax.jit(half.model.apply)({"params": half.params}, inputs)
    # bf16 weights and activations: logits of O(5) agree to a few 1e-2
    assert float(np.abs(np.asarray(full) - np.asarray(low)).max()) < 0.15
    assert float(np.abs(np.asarray(full) - np.asarray(low)).mean()) < 0.02


def test_phase_two_step_contains_no_teacher(student_config):
    mesh, teacher, model, tx, sched, shardings, st, batches = _pieces(student_config)
    steps = StepPrograms(model, tx, sched, 0, mesh, shardings, DenseLoss(student_config.salt), teacher=teacher,
                          phase=_phase(student_config))
    tokens = jax.device_put(batches.numpy(0), steps.batch_sharding)
    plain = steps.lower(st, tokens).compile()
    fused = steps.lower(st, tokens, teacher.params).compile()
    n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
    teacher_forward = flops_per_token(teacher.config, tokens.shape[1] - 1) * n_tokens / mesh.size
    extra = fused.cost_analysis()["flops"] - plain.cost_analysis()["flops"]  # per device (SPMD program)
    # the fused step adds at least the teacher's forward matmuls; the plain step has none of it
    assert extra > 0.9 * teacher_forward
    teacher_shapes = {tuple(x.shape) for x in jax.tree.leaves(teacher.params)}
    plain_inputs = {tuple(a.shape) for a in jax.tree.leaves(plain.args_info[0])}
    assert not (teacher_shapes - {tuple(x.shape) for x in jax.tree.leaves(st.params)}) & plain_inputs
    teacher.release()
    assert teacher.params is None


def test_switch_at_n_kd_and_exact_resume_across_it(student_config, tmp_path):
    c = student_config
    c.train.checkpoint_every = 5  # checkpoints at 5, 10, 12; the switch is at 7
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    summary = loop.run(c, full)
    assert summary["kd_phase_end"] == 7
    lines = {r["step"]: r for r in read_metrics(os.path.join(full, "metrics.jsonl")) if r["split"] == "train"}
    assert lines[4]["kd_weight"] == 0.5 and lines[4]["kd_loss"] > 0 and lines[4]["teacher_ntp_loss"] > 0
    assert lines[4]["mfu"] is None  # CPU: no peak in the table
    assert lines[12]["model_tflops_per_sec"] > 0
    assert lines[8]["kd_weight"] == pytest.approx(0.5 * 3 / 4)  # steps 4, 5, 6 distil; step 7 does not
    assert lines[12]["kd_weight"] == 0.0 and lines[12]["kd_loss"] is None

    os.makedirs(os.path.join(resumed, "checkpoints"))
    shutil.copytree(os.path.join(full, "checkpoints", "5"), os.path.join(resumed, "checkpoints", "5"))
    loop.run(c, resumed)
    model = Transformer(c.model)
    tx, _ = optim.make_optimizer(c.optim, c.train.steps)
    abstract, shardings = state_lib.abstract_state(model, tx, c.data.seq_len, sharding.make_mesh(c.mesh))

    def final(workdir):
        state, record = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), 5, 3).restore(
            12, abstract, shardings)
        return jax.device_get(state), record

    (a, rec_a), (b, rec_b) = final(full), final(resumed)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert rec_a["teacher"]["fingerprint"] == rec_b["teacher"]["fingerprint"] and rec_a["kd_phase_end"] == 7
    assert "opt_state" not in json.dumps(rec_a) and rec_a["teacher"]["checkpoint"].endswith("/20")


def test_resume_with_another_teacher_is_refused(student_config, tmp_path, teacher_dir):
    c = student_config
    c.train.checkpoint_every, c.train.keep_checkpoints = 3, 10
    loop.run(c, str(tmp_path / "run"))
    for step in ("6", "9", "12"):  # as if the run had stopped at step 3, inside the KD phase (n_KD = 7)
        shutil.rmtree(tmp_path / "run" / "checkpoints" / step)
    other = str(tmp_path / "other_teacher")
    shutil.copytree(teacher_dir, other)
    # same shapes, different values: train the copied teacher one more step in place
    from salt_jax.config import base_config

    t = base_config("test-tiny-teacher")
    t.data = c.data
    t.train.steps, t.train.checkpoint_every, t.train.heldout_every, t.train.progress = 21, 21, 21, False
    set_method(t, "teacher")
    os.remove(os.path.join(other, "config.json"))  # (a run resumed with more steps is refused; not the point here)
    loop.run(t, other)
    c.salt.teacher = other
    with pytest.raises(UserError, match="config.salt.teacher=.*this run was trained with teacher"):
        loop.run(c, str(tmp_path / "run"))


def test_vocab_and_missing_teacher_errors(student_config, tmp_path):
    c = student_config
    c.model.vocab_size = 300
    with pytest.raises(UserError, match=r"vocabulary \(259\) differs .*vocab_size \(300\)"):
        loop.run(c, str(tmp_path / "a"))
    c.model.vocab_size = 259
    c.salt.teacher = str(tmp_path / "nope")
    with pytest.raises(UserError, match="config.salt.teacher=.*no such directory"):
        loop.run(c, str(tmp_path / "b"))
    os.makedirs(tmp_path / "empty")
    c.salt.teacher = str(tmp_path / "empty")
    with pytest.raises(UserError, match="no finished checkpoint"):
        loop.run(c, str(tmp_path / "c"))
    assert not os.path.exists(tmp_path / "a" / "checkpoints" / "1")


def test_cli_salt_student_runs_both_phases(tmp_path, cache_dir, teacher_dir):
    workdir = tmp_path / "student"
    args = [f"--config={os.path.join(REPO, 'configs', 'test_tiny.py')}:salt-adaptive",
            f"--config.salt.teacher={teacher_dir}", "--config.data.seq_len=32", "--config.data.max_files=60",
            "--config.data.heldout_fraction=0.1", "--config.train.steps=16", "--config.salt.adaptive_min_steps=4",
            "--config.salt.adaptive_max_steps=10", "--config.train.log_every=1", f"--workdir={workdir}"]
    out = subprocess.run([sys.executable, "-m", "salt_jax.main", *args], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, SALT_JAX_CACHE=cache_dir), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.load(open(workdir / "summary.json"))
    switch = summary["kd_phase_end"]
    assert 4 <= switch <= 10
    lines = [r for r in read_metrics(str(workdir / "metrics.jsonl")) if r["split"] == "train"]
    assert all(r["kd_loss"] is not None and r["kd_weight"] == 0.5 for r in lines[:switch])
    assert all(r["kd_loss"] is None and r["kd_weight"] == 0.0 for r in lines[switch:])
    assert "teacher released" in out.stdout


def test_the_run_reads_one_resolved_config_and_leaves_the_users_alone(tiny_config, teacher_dir, tmp_path):
    """setup validates and resolves the config once (salt_jax.config.resolved): the user's object is unchanged
    (its run-relative -1 defaults included), config.json holds the resolved value, and resolving again changes
    nothing."""
    from salt_jax.config import resolved
    from salt_jax.train import setup as setup_lib

    c = tiny_config
    set_method(c, "salt-linear")  # kd_steps, transition_steps -1: derived from the run's length
    c.salt.teacher = teacher_dir
    before = json.loads(c.to_json_best_effort())
    run = setup_lib.setup(c, str(tmp_path))
    run.teacher.release()
    assert json.loads(c.to_json_best_effort()) == before and c.salt.kd_steps == -1
    n_kd = int(round(c.salt.kd_fraction * c.train.steps))
    assert run.config.salt.kd_steps == n_kd and run.config.salt.transition_steps == max(1, round(n_kd / 2))
    written = json.load(open(tmp_path / "config.json"))
    assert written["salt"] == json.loads(run.config.salt.to_json_best_effort())
    assert resolved(run.config).to_dict() == run.config.to_dict()
    with pytest.raises(ValueError, match="config.salt is not resolved"):
        KDPhase.from_config(c.salt, c.train.steps, c.data.batch_size)
