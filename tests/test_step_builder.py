"""The step builder gives bit-identical results to the steps it replaced, on a fixed batch.

tests/data/step_golden.json was written by the previous step code
(make_train_step / make_kd_train_step, before the one-builder refactor) on
this stack with 8 CPU devices: a SHA-256 of the state after two steps of a
test-tiny student (with a randomly initialised test-tiny-teacher for salt and
salt_ds), the per-step metrics and a held-out evaluation, for the dense and
the chunked loss.
"""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import REPO
from salt_jax.config import base_config, set_method
from salt_jax.kd import objective
from salt_jax.kd import teacher as teacher_lib
from salt_jax.kd.schedules import KDPhase
from salt_jax.model import sharding
from salt_jax.model.transformer import Transformer
from salt_jax.train import optim
from salt_jax.train import state as state_lib
from salt_jax.train.step import CompiledSteps

GOLDEN = json.load(open(os.path.join(REPO, "tests", "data", "step_golden.json")))


def _digest(tree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()[:20]


@pytest.mark.parametrize("method", ["baseline", "salt", "salt_ds"])
@pytest.mark.parametrize("loss", ["dense", "chunked"])
def test_step_builder_matches_the_previous_steps_bit_for_bit(method, loss):
    c = base_config("test-tiny")
    set_method(c, method)
    c.salt.teacher = "unused"
    c.train.steps, c.train.loss, c.train.loss_chunk, c.data.seq_len = 10, loss, 8, 32
    phase = KDPhase.from_config(c.salt, c.train.steps, 8)
    mesh = sharding.make_mesh(c.mesh)
    model = Transformer(c.model)
    tx, lr = optim.make_optimizer(c.optim, c.train.steps)
    _, shard = state_lib.abstract_state(model, tx, 32, mesh)
    state = state_lib.create_state(model, tx, 32, mesh, 0)
    teacher = None
    if method != "baseline":
        tcfg = base_config("test-tiny-teacher").model
        tmodel, tshard = teacher_lib.layout(tcfg, c.salt, mesh)
        with sharding.on_mesh(mesh):
            tparams = jax.jit(lambda r: nn.meta.unbox(tmodel.init(r, jnp.zeros((1, 8), jnp.int32))["params"]),
                              out_shardings=tshard)(jax.random.key(1))
        teacher = teacher_lib.Teacher(model=tmodel, config=tcfg, params=tparams, shardings=tshard, checkpoint="",
                                      fingerprint="", tokenizer="")
    steps = CompiledSteps(model, tx, lr, 0, mesh, shard, objective.make_loss(c), teacher=teacher, phase=phase)
    rng = np.random.default_rng(0)
    metrics = []
    for _ in range(2):
        batch = rng.integers(1, c.model.vocab_size, (8, 33)).astype(np.int32)
        batch[0, 20:] = 0  # some padding
        tokens = jax.make_array_from_process_local_data(steps.batch_sharding, batch, batch.shape)
        state, m = steps.train(state, tokens, None if teacher is None else teacher.params)
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    ev = {k: float(v) for k, v in jax.device_get(steps.eval(state.params, tokens)).items()}
    want = GOLDEN[f"{method}-{loss}"]
    assert metrics == want["metrics"]
    assert ev == want["eval"]
    assert _digest(state) == want["state"]
