"""The chunked CE+KD loss equals the dense reference; it holds one chunk of logits; FLOPs and MFU."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from salt_jax.kd import chunked_loss as cl
from salt_jax.kd import losses
from salt_jax.model import flops, presets
from salt_jax.model.flops import flops_per_token

from conftest import REPO

B, T, D_S, D_T, V = 3, 11, 16, 12, 53


def _inputs(seed=0, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    hs = jnp.asarray(r.normal(size=(B, T, D_S)), dtype)
    ws = jnp.asarray(r.normal(size=(D_S, V)) * 0.5, dtype)
    ht = jnp.asarray(r.normal(size=(B, T, D_T)), dtype)
    wt = jnp.asarray(r.normal(size=(D_T, V)) * 0.5, dtype)
    y = jnp.asarray(r.integers(0, V, size=(B, T)))
    mask = jnp.asarray(r.random((B, T)) > 0.25)  # padding
    mask = mask.at[:, -3:].set(False)  # a padded tail, as in a short final document
    kd_w = jnp.asarray(np.where(np.arange(B)[:, None] < 2, 0.6, 0.0) * np.ones((B, T)), jnp.float32)
    return hs, ws, ht, wt, y, mask, kd_w


def _dense(hs, ws, ht, wt, y, mask, kd_w, o: cl.LossOptions):
    """The dense path of salt_jax.train.step: full logits, losses.full_kd_per_token, losses.mixture_stats."""
    s = jnp.einsum("btd,dv->btv", hs.astype(o.dtype), ws.astype(o.dtype), preferred_element_type=jnp.float32)
    t = jnp.einsum("btd,dv->btv", ht.astype(o.dtype), wt.astype(o.dtype), preferred_element_type=jnp.float32)
    w = kd_w * losses.teacher_selection(t, y, o.token_select, o.token_select_k, o.token_select_threshold)
    stats = losses.mixture_stats(losses.token_ce(s, y), losses.full_kd_per_token(s, t, o.temperature,
                                                                                o.kd_loss, o.kd_topk), w, mask)
    stats["correct"] = jnp.sum((jnp.argmax(s, -1) == y) * mask)
    stats["teacher_ntp_sum"] = jnp.sum(losses.token_ce(t, y) * mask)
    return stats


def _value_and_grads(fn, hs, ws):
    return jax.jit(jax.value_and_grad(lambda h, w: (lambda st: (st["loss_sum"], st))(fn(h, w)), argnums=(0, 1),
                                      has_aux=True))(hs, ws)


CASES = [  # (kd_loss, kd_topk, temperature, token_select, chunk)
    ("forward_kl", 0, 1.0, "none", 4),  # 4 does not divide T=11
    ("forward_kl", 0, 2.0, "none", 11),
    ("forward_kl", 0, 1.0, "topk", 1),
    ("reverse_kl", 0, 0.5, "none", 3),
    ("reverse_kl", 0, 2.0, "confidence", 64),  # chunk longer than the sequence
    ("topk_kl", 5, 1.0, "none", 5),
    ("topk_kl", 7, 3.0, "topk", 2),
]


@pytest.mark.parametrize("kind,topk,tau,select,chunk", CASES)
def test_chunked_equals_dense_in_value_and_gradients_float32(kind, topk, tau, select, chunk):
    hs, ws, ht, wt, y, mask, kd_w = _inputs()
    o = cl.LossOptions(chunk=chunk, temperature=tau, kd_loss=kind, kd_topk=topk, token_select=select,
                       token_select_k=4, token_select_threshold=0.05)
    (a, sa), ga = _value_and_grads(lambda h, w: cl.chunked_loss(h, w, y, mask, o, ht, wt, kd_w), hs, ws)
    (b, sb), gb = _value_and_grads(lambda h, w: _dense(h, w, ht, wt, y, mask, kd_w, o), hs, ws)
    # float32: sums of ~30 tokens of O(1-10) losses agree to ~1e-5 relative; gradients to 1e-5 absolute.
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-5)
    for key in ("ntp_sum", "kd_sum", "kd_weight_sum", "kd_tokens", "correct", "teacher_ntp_sum"):
        np.testing.assert_allclose(sa[key], sb[key], rtol=2e-6, atol=1e-5, err_msg=key)
    assert float(sa["tokens"]) == float(jnp.sum(mask))
    assert 0 < float(sa["kd_tokens"]) < float(sa["tokens"])  # some tokens distil, some do not
    for x, z in zip(ga, gb):
        np.testing.assert_allclose(x, z, atol=1e-5)
        assert float(jnp.abs(z).max()) > 1e-2  # the gradients being compared are not trivially zero


def test_chunked_applies_final_softcaps_like_the_dense_path():
    """Gemma-2-style final soft-caps on both models (c tanh(z / c)), small enough to bite."""
    hs, ws, ht, wt, y, mask, kd_w = _inputs(seed=4)
    hs, ht = hs * 3, ht * 3  # logits of O(10) against caps of 2.5 and 4
    o = cl.LossOptions(chunk=4, temperature=2.0, student_softcap=2.5, teacher_softcap=4.0)

    def dense(h, w):
        s = 2.5 * jnp.tanh(jnp.einsum("btd,dv->btv", h, w) / 2.5)
        t = 4.0 * jnp.tanh(jnp.einsum("btd,dv->btv", ht, wt) / 4.0)
        st = losses.mixture_stats(losses.token_ce(s, y), losses.full_kd_per_token(s, t, 2.0), kd_w, mask)
        st["teacher_ntp_sum"] = jnp.sum(losses.token_ce(t, y) * mask)
        return st

    (a, sa), ga = _value_and_grads(lambda h, w: cl.chunked_loss(h, w, y, mask, o, ht, wt, kd_w), hs, ws)
    (b, sb), gb = _value_and_grads(dense, hs, ws)
    np.testing.assert_allclose(a, b, rtol=2e-6)
    np.testing.assert_allclose(sa["teacher_ntp_sum"], sb["teacher_ntp_sum"], rtol=2e-6)
    for x, z in zip(ga, gb):
        np.testing.assert_allclose(x, z, atol=1e-5)
    (c, _), _ = _value_and_grads(lambda h, w: cl.chunked_loss(h, w, y, mask, cl.LossOptions(chunk=4, temperature=2.0),
                                                              ht, wt, kd_w), hs, ws)
    assert abs(float(c) - float(a)) > 1.0  # the caps change the loss: the comparison above is not vacuous


def test_chunked_equals_dense_in_bfloat16():
    """bf16 operands with float32 accumulation, as in a bf16 run: agreement to bf16 precision."""
    hs, ws, ht, wt, y, mask, kd_w = _inputs(seed=1, dtype=jnp.bfloat16)
    o = cl.LossOptions(chunk=4, temperature=2.0, dtype=jnp.bfloat16)
    (a, _), ga = _value_and_grads(lambda h, w: cl.chunked_loss(h, w, y, mask, o, ht, wt, kd_w), hs, ws)
    (b, _), gb = _value_and_grads(lambda h, w: _dense(h, w, ht, wt, y, mask, kd_w, o), hs, ws)
    np.testing.assert_allclose(a, b, rtol=1e-4)  # the logits are identical; only the sum order differs
    for x, z in zip(ga, gb):
        x, z = np.asarray(x, np.float32), np.asarray(z, np.float32)
        # bf16 gradients: 8 mantissa bits -> relative error ~2^-8 of the largest entry
        assert np.abs(x - z).max() <= 2e-2 * np.abs(z).max()


def test_plain_next_token_loss_without_a_teacher():
    hs, ws, _, _, y, mask, _ = _inputs(seed=2)
    o = cl.LossOptions(chunk=3)
    (a, sa), ga = _value_and_grads(lambda h, w: cl.chunked_loss(h, w, y, mask, o), hs, ws)

    def dense(h, w):
        return losses.next_token_stats(jnp.einsum("btd,dv->btv", h, w), y, mask)

    (b, sb), gb = _value_and_grads(dense, hs, ws)
    np.testing.assert_allclose(a, b, rtol=2e-6)
    assert float(sa["correct"]) == float(sb["correct"])
    for x, z in zip(ga, gb):
        np.testing.assert_allclose(x, z, atol=1e-6)


def test_kd_gradient_formulas_match_autodiff_of_the_kd_loss():
    r = np.random.default_rng(3)
    t, s = (jnp.asarray(r.normal(size=(4, V)) * 2, jnp.float32) for _ in range(2))
    for kind, k in (("forward_kl", 0), ("reverse_kl", 0), ("topk_kl", 6)):
        value, grad = cl.full_kd_value_and_grad(s, t, 1.7, kind, k)
        ref = jax.grad(lambda x: jnp.sum(losses.full_kd_per_token(x, t, 1.7, kind, k)))(s)
        np.testing.assert_allclose(value, losses.full_kd_per_token(s, t, 1.7, kind, k), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, ref, atol=1e-6)


def _temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_compiled_chunked_loss_holds_one_chunk_of_logits():
    """At vocab 8192, 2 x 512 tokens: dense float32 logits are 2 x 16 MiB; a 32-position chunk is 2 x 1 MiB."""
    b, t, d, v = 2, 512, 32, 8192
    hs = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    ws = jax.ShapeDtypeStruct((d, v), jnp.float32)
    ht = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    y = jax.ShapeDtypeStruct((b, t), jnp.int32)
    mask = jax.ShapeDtypeStruct((b, t), jnp.float32)
    o = cl.LossOptions(chunk=32)

    def grad_of(fn):
        return lambda h, w, ht_, wt_, y_, m_, k_: jax.grad(lambda h, w: fn(h, w, ht_, wt_, y_, m_, k_)["loss_sum"],
                                                           argnums=(0, 1))(h, w)

    chunked = _temp_bytes(grad_of(lambda h, w, ht_, wt_, y_, m_, k_: cl.chunked_loss(h, w, y_, m_, o, ht_, wt_, k_)),
                          hs, ws, ht, ws, y, mask, mask)
    dense = _temp_bytes(grad_of(lambda h, w, ht_, wt_, y_, m_, k_: _dense(h, w, ht_, wt_, y_, m_, k_, o)),
                        hs, ws, ht, ws, y, mask, mask)
    logits = b * t * v * 4  # one float32 [b, t, V] tensor: 32 MiB
    bound = logits // 2  # the chunked loss must stay below half of ONE full logits tensor
    assert chunked < bound, (chunked, bound)
    assert dense > 2 * logits, dense  # the dense loss holds at least the two models' logits


def test_flops_per_token_matches_a_hand_count_for_test_tiny():
    c = presets.model_config("test-tiny")  # V=259, d=32, 2 layers, 4 heads (2 kv) of 8, mlp 64
    seq = 32
    q_o = 32 * 8 * 4 * 2  # q and o projections: d x (heads x head_dim), twice = 2048
    k_v = 32 * 8 * 2 * 2  # k and v: d x (kv_heads x head_dim), twice = 1024
    mlp = 3 * 32 * 64  # gate, up, down = 6144
    head = 32 * 259  # output projection = 8288
    matmul_params = 2 * (q_o + k_v + mlp) + head  # 2 layers -> 18432 + 8288 = 26720
    attention = 2 * 2 * 4 * 8 * seq  # layers x (QK^T + AV: 2 x 2 flops x heads x head_dim x seq/2 causal)
    assert matmul_params == 26720 and attention == 4096
    assert flops_per_token(c, seq) == 2 * 26720 + 4096 == 57536
    assert flops.train_flops_per_token(c, seq) == 3 * 57536
    t = presets.model_config("test-tiny-teacher")
    assert flops.train_flops_per_token(c, seq, t) == 3 * 57536 + flops_per_token(t, seq)


def test_sliding_window_layers_count_only_the_keys_in_their_window():
    """test-tiny with one local layer (window 8) and one global layer at seq 32: the local layer's
    attention covers T*W - W^2/2 = 224 of the T^2/2 = 512 causal query-key pairs."""
    c = presets.model_config("test-tiny")
    seq, per_key = 32, 2 * 2 * 4 * 8  # QK^T + AV, 2 flops each, 4 heads x head_dim 8, per attended key
    dense = flops_per_token(c, seq)
    c.sliding_window, c.local_layers = 8, "LG"
    assert flops_per_token(c, seq) == dense - per_key * (seq / 2) + per_key * (32 * 8 - 8 * 8 / 2) / seq
    assert flops_per_token(c, seq) == 57536 - 128 * 16 + 128 * 7  # 16 keys per query -> 7
    c.local_layers = ""  # every layer local
    assert flops_per_token(c, seq) == 57536 - 2 * 128 * (16 - 7)
    c.sliding_window = 64  # a window longer than the sequence changes nothing
    assert flops_per_token(c, seq) == dense


def test_mfu_on_a_synthetic_timing():
    # 1B-parameter-like step: 6e9 FLOPs/token at 40,000 tokens/s on 8 H100s = 2.4e14 / 7.912e15
    peak = flops.peak_flops("NVIDIA H100 80GB HBM3")
    assert peak == 989e12
    assert flops.mfu(40_000, 6e9, 8, peak) == pytest.approx(2.4e14 / (8 * 989e12))
    assert flops.peak_flops("NVIDIA H200") == 989e12
    assert flops.peak_flops("TPU v5 lite") == 197e12 and flops.peak_flops("TPU v5") == 459e12
    assert flops.peak_flops("cpu") is None and flops.mfu(1000, 1e9, 1, None) is None
    assert flops.peak_flops("cpu", override_tflops=2.0) == 2e12


def test_train_line_reports_model_flops_and_mfu():
    import dataclasses

    from salt_jax.model.flops import RunFlops
    from salt_jax.train.metrics import train_line

    one = {"loss_sum": 10.0, "ntp_sum": 10.0, "tokens": 100.0, "correct": 5.0, "learning_rate": 1e-3,
           "grad_norm": 1.0}
    kd = dict(one, kd_sum=4.0, kd_tokens=50.0, teacher_ntp_sum=8.0, kd_weight=0.5)
    flops = RunFlops(student=6e9, teacher=2e9, devices=4, peak=1e14)
    # 2 steps of 100 tokens in 0.5 s: 400 tokens/s; half the steps ran the teacher -> 7e9 FLOPs/token
    line = train_line([kd, one], 0.5, 100, 2, flops)
    assert line["tokens_per_sec"] == 400.0
    assert line["model_tflops_per_sec"] == pytest.approx(400 * 7e9 / 1e12)
    assert line["mfu"] == pytest.approx(400 * 6e9 / 4e14)
    assert line["mfu_with_teacher"] == pytest.approx(400 * 7e9 / 4e14)
    cpu = train_line([one], 1.0, 100, 1, dataclasses.replace(flops, peak=None))
    assert cpu["mfu"] is None and cpu["model_tflops_per_sec"] == pytest.approx(100 * 6e9 / 1e12)


def test_bench_reports_the_flop_model_and_a_memory_saving(tmp_path):
    """python -m salt_jax.bench on configs/bench.py:test-tiny (test-tiny <- test-tiny-teacher), shapes overridden."""
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "salt_jax.bench", "--config=configs/bench.py:test-tiny",
                          "--config.model.vocab_size=4096", "--config.data.batch_size=8", "--config.data.seq_len=64",
                          "--config.train.loss=chunked", "--config.train.loss_chunk=16", "--repeats=2",
                          f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "KD/baseline measured" in run.stdout and "chunked/dense: time" in run.stdout  # the printed table
    r = json.loads(out.read_text())
    assert (r["student"], r["teacher"], r["batch"], r["seq_len"], r["vocab"], r["loss"], r["chunk"]) == (
        "test-tiny", "test-tiny-teacher", 8, 64, 4096, "chunked", 16)
    s, lo = r["steps"], r["loss_bench"]
    student, teacher = presets.model_config("test-tiny"), presets.model_config("test-tiny-teacher")
    student.vocab_size = teacher.vocab_size = 4096
    assert s["flop_model_ratio"] == pytest.approx(1 + flops_per_token(teacher, 64) / (3 * flops_per_token(student, 64)))
    assert s["measured_ratio"] == pytest.approx(s["kd_step_s"] / s["baseline_step_s"])
    assert s["baseline_tokens_per_s"] == pytest.approx(8 * 64 / s["baseline_step_s"])
    # the KD step from cached top-64 targets: 64 x (2-byte id + 2-byte log-prob) + the bucket and target
    # log-probs, against 4096 x 4 bytes of dense float32 logits per token
    assert (s["cache_bytes_per_token_float16"], s["dense_logits_bytes_per_token_float32"]) == (260, 16384)
    assert s["cached_ratio"] > 0 and s["cached_memory"]["temp_bytes"] > 0
    # float32 logits: 8 MiB per model for 8 x 64 positions, 2 MiB for a 16-position chunk. Both programs
    # hold about four logits-sized temporaries (logits, softmaxes, their gradient): 4 x 8 vs 4 x 2 MiB.
    full, chunk = 8 * 64 * 4096 * 4, 8 * 16 * 4096 * 4
    assert lo["dense"]["temp_bytes"] > 3 * full and lo["chunked"]["temp_bytes"] < 5 * chunk
    assert lo["temp_ratio"] == pytest.approx(lo["chunked"]["temp_bytes"] / lo["dense"]["temp_bytes"])
