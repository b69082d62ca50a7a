"""Ahead-of-time compilation for TPU slices on this CPU host (libtpu, no TPU): salt_jax.aot and salt_jax.compile.

The compiled programs are real TPU executables; the tests check their memory
against hand-computed byte counts, the loop correction of the cost model
against a fully unrolled program, the splash kernel's sharding against XLA
attention, and the one-line errors.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO

pytest.importorskip("libtpu", reason="the [tpu] extra (libtpu) compiles for TPU slices")

from salt_jax.aot import check, estimate, programs, topology  # noqa: E402
from salt_jax.aot.estimate import Cost  # noqa: E402
from salt_jax.errors import UserError  # noqa: E402
from salt_jax.model.flops import param_count  # noqa: E402
from salt_jax import recipes  # noqa: E402


@pytest.fixture(scope="module")
def v5e():
    return topology.tpu_slice("v5e:2x2")


WIDE = {"n_layers": 4, "d_model": 512, "mlp_dim": 1024, "n_heads": 4, "n_kv_heads": 2, "head_dim": 128}


def _tiny(method="salt", wide=False, **data):
    """test-tiny; `wide`: widths that fill TPU tiles (128 lanes), so padding does not dominate its bytes."""
    c = recipes.tiny_run(method)
    if wide:
        c.model.update(WIDE)
    c.salt.teacher_preset = "test-tiny-teacher"  # no teacher checkpoint needed
    c.model.dtype = "bfloat16"
    c.data.seq_len, c.data.batch_size = data.get("seq_len", 128), data.get("batch_size", 8)
    return c


def test_topology_names_and_accelerator_types():
    assert topology.parse("v5p:4x4x4") == ("v5p", (4, 4, 4))
    assert topology.parse("v5p-128") == ("v5p", (4, 4, 4))  # v5p-N counts TensorCores, two per chip
    assert topology.parse("v4-256") == ("v4", (4, 4, 8))
    assert topology.parse("v6e-256") == ("v6e", (16, 16))
    assert topology.parse("v5litepod-16") == ("v5e", (4, 4))
    with pytest.raises(UserError, match=r"--topology='v7:2x2': give GENERATION:GRID"):
        topology.parse("v7:2x2")
    v4 = topology.tpu_slice("v4:2x2x2")
    assert (v4.chips, v4.device_kind) == (8, "TPU v4")  # megacore: one device per chip, not per core


def test_a_mesh_the_torus_cannot_hold_is_one_error_naming_shapes_that_can():
    from ml_collections import ConfigDict

    from salt_jax.model import sharding

    chips = topology.tpu_slice("v5p:8x8x16").devices
    with pytest.raises(UserError) as e:
        sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 256, "tensor": 4}), chips)
    assert str(e.value).startswith("config.mesh: (data, fsdp, tensor) = (1, 256, 4) does not fit the physical layout "
                                   "of the 1024 TPU v5 chips")
    assert "(1, 128, 8)" in str(e.value)
    assert dict(sharding.make_mesh(ConfigDict({"data": 1, "fsdp": 128, "tensor": 8}), chips).shape) == {
        "data": 1, "fsdp": 128, "tensor": 8}


def test_loop_extrapolation_by_hand():
    base = Cost(10.0, 100.0, 1.0)
    assert estimate.extrapolate(base, {"student": Cost(14.0, 130.0, 1.5)}, {"student": 6}) == Cost(30.0, 250.0, 3.5)
    # 5 trips unrolled twice: the loop body holds 2 iterations and 1 runs outside it, so 3 are counted
    assert estimate.counted_iterations(5, 2) == 3
    assert estimate.extrapolate(base, {"loss": Cost(14.0, 100.0, 1.0)}, {"loss": 5, "student": 1}) == Cost(
        18.0, 100.0, 1.0)


def test_search_tries_the_meshes_the_heads_and_batch_allow():
    c = _tiny("salt")  # 2 KV heads, batch 8
    assert check.mesh_candidates(c, 8) == [(1, 8, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)]
    c.data.batch_size = 4
    assert check.mesh_candidates(c, 8) == [(1, 4, 2), (2, 2, 2)]  # 8-way batch splits do not divide 4 rows


def test_negative_cost_entries_are_counted():
    hlo = "\n".join([
        '  %a = bf16[8]{0} custom-call(%x), custom_call_target="ConcatBitcast"',
        "  %b = (f32[4], f32[4]) collective-permute-start(%y), source_target_pairs={{0,1}}",
        "  %c = f32[4] collective-permute-done(%b)",
        "  %d = f32[4] collective-permute(%z), source_target_pairs={{1,0}}",
        '  %e = f32[4] custom-call(%w), custom_call_target="tpu_custom_call"'])
    assert estimate.negative_entries(hlo) == 3  # the start and the plain permute, not the done
    # The smallest whole number of seconds added back that reaches the compute bound, at most one per entry.
    assert estimate.corrected_seconds(0.3, 2, 0.5) == pytest.approx(1.3)
    assert estimate.corrected_seconds(-1.6, 3, 0.2) == pytest.approx(0.4)
    assert estimate.corrected_seconds(1e-3, 6, 5e-4) == 1e-3  # nothing was subtracted (v5e)
    assert estimate.corrected_seconds(-3.0, 1, 0.2) is None  # not reachable: unavailable

    class Compiled:  # a compiled program's cost analysis and text
        def cost_analysis(self):
            return {"flops": 2e12, "bytes accessed": 5e9, "optimal_seconds": -0.7}

        def as_text(self):
            return hlo

    assert estimate.cost_of(Compiled(), peak=1e13) == Cost(2e12, 5e9, pytest.approx(0.3), True)


@pytest.fixture(scope="module")
def wide(v5e):
    """The wide test-tiny baseline data-parallel over a v5e:2x2: its programs and its compiled step."""
    from salt_jax.model import sharding

    c = programs.target_config(_tiny("baseline", wide=True), "tpu")
    progs = programs.Programs(c, sharding.make_mesh(c.mesh, v5e.devices), None)
    return progs, progs.lowered("baseline").compile()


def test_extrapolated_cost_equals_the_fully_unrolled_program(v5e, wide):
    """4 layers: the rolled program plus its unrolled-twice variant must give the FLOPs of the program with
    the loop gone, and of the FLOP model (matmuls, without the splash kernel's attention)."""
    from salt_jax.model import flops

    progs, compiled = wide
    assert progs.loops("baseline") == {"student": 4}
    peak = 197e12  # v5e
    cost = {"base": estimate.cost_of(compiled, peak)}
    cost.update({name: estimate.cost_of(progs.lowered("baseline", u).compile(), peak) for name, u in (
        ("student", programs.Unroll(student=2)), ("flat", programs.Unroll(student=4)))})
    total = estimate.extrapolate(cost["base"], cost, progs.loops("baseline"))
    assert cost["base"].kernels  # attention="auto" compiled the splash kernel for the TPU target
    assert cost["base"].flops < 0.4 * total.flops  # uncorrected, the cost model misses most of the step
    assert abs(total.flops / cost["flat"].flops - 1) < 0.01, (total, cost["flat"])
    c = progs.config
    per_chip = (flops.train_flops_per_token(c.model, 128) - 3 * estimate.attention_flops_per_token(c.model, 128)
                ) * 8 * 128 / v5e.chips
    assert 1.0 < total.flops / per_chip < 1.08, (total.flops, per_chip)  # + norms, softmax, AdamW
    # The loop's dynamic slices of the stacked weights cost bytes the unrolled program fuses away: the rolled
    # program's time is never below the loop-free one's.
    assert total.seconds >= 0.95 * cost["flat"].seconds


def test_memory_per_chip_holds_the_state_and_shrinks_with_fsdp(v5e, wide):
    """Data-parallel over 4 chips each chip holds the whole f32 student with AdamW's two moments and a quarter
    of the batch (TPU tiling pads small arrays: a lower bound); with fsdp over the 4 chips a quarter of it."""
    progs, compiled = wide
    replicated = estimate.memory_of(compiled)["argument"]
    n_s = param_count(progs.config.model)
    tokens = 8 // 4 * 129 * 4  # this chip's rows of the [8, 129] int32 batch
    assert 12 * n_s + tokens <= replicated <= 1.5 * (12 * n_s + tokens), (replicated, n_s)
    c = _tiny("baseline", wide=True)
    c.mesh.data, c.mesh.fsdp = 1, 4
    r = check.check(c, v5e, with_estimate=False)
    assert r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and r["attention"] == "splash" and r["fits"]
    sharded = r["programs"]["baseline"]["memory_bytes"]["argument"]
    assert 0.25 * replicated <= sharded < 0.3 * replicated, (sharded, replicated)


def test_splash_splits_heads_over_the_tensor_axis():
    """The shard_map around a kernel: rows over data*fsdp, heads over tensor; the numbers are XLA attention's."""
    from ml_collections import ConfigDict

    from salt_jax.model import attention, sharding

    mesh = sharding.make_mesh(ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(4, 16, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(4, 16, 2, 8)), jnp.float32) for _ in range(2))
    seen = []

    def kernel(qs, ks, vs):
        seen.append((qs.shape, ks.shape))
        return attention.xla_attention(qs, ks, vs, scale=8**-0.5)

    with sharding.on_mesh(mesh):
        out = jax.jit(lambda q, k, v: attention.per_shard(kernel, q, k, v))(q, k, v)
    assert seen == [((1, 16, 2, 8), (1, 16, 1, 8))]  # a quarter of the rows, half of the heads
    np.testing.assert_allclose(out, attention.xla_attention(q, k, v, scale=8**-0.5), atol=1e-6)


def test_a_program_that_does_not_fit_is_reported_not_raised(v5e):
    c = _tiny("baseline", seq_len=128, batch_size=1 << 17)  # dense logits: 2^15 x 128 x 259 x 4 B per chip
    r = check.check(c, v5e, with_estimate=False)
    p = r["programs"]["baseline"]
    assert not r["fits"] and not p["fits"] and "memory" in p["compiler"].lower(), p


def test_teacher_size_comes_from_the_preset_or_the_checkpoint():
    from salt_jax.kd import teacher
    from salt_jax.model.presets import model_config

    with pytest.raises(UserError, match=r"config.salt.teacher_preset=test-tiny: the teacher X has d_model=16, "
                                        r"the preset 32"):
        teacher.check_preset(model_config("test-tiny-teacher"), "test-tiny", "X")
    c = _tiny("salt")
    c.salt.teacher_preset, c.salt.teacher = "", "/no/such/teacher"
    with pytest.raises(UserError, match=r"config.salt.teacher='/no/such/teacher' has no readable checkpoint here; "
                                        r"to compile before the teacher exists, set --config.salt.teacher_preset"):
        programs.teacher_config(programs.target_config(c, "tpu"))


def test_paper_configs_resolve_for_tpu():
    c = programs.target_config(recipes.paper_run("salt_ds", "paper-2.8b"), "tpu")
    assert (c.model.attention, c.salt.kd_steps, c.train.steps, c.data.seq_len) == ("splash", 36_000, 208_000, 2048)
    t = programs.teacher_config(c)
    assert (t.preset, t.dtype, t.param_dtype, t.attention) == ("paper-1.5b", "bfloat16", "bfloat16", "splash")
    assert 2.7e9 < param_count(c.model) < 2.9e9 and 1.4e9 < param_count(t) < 1.6e9


def test_compile_cli_writes_its_report(tmp_path):
    out = tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # the command pins the CPU itself
    p = subprocess.run([sys.executable, "-m", "salt_jax.compile", "--config=configs/test_tiny.py:salt",
                        "--config.salt.teacher_preset=test-tiny-teacher", "--config.data.seq_len=128",
                        "--topology=v5e-4", f"--out={out}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    # libtpu starting off a TPU VM: no "unexpected worker hostname" / "could not determine TPU" lines
    assert "E0000" not in p.stderr and "could not determine TPU" not in p.stderr, p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert list(r["programs"]) == ["kd", "baseline"] and r["fits"] and r["topology"] == "v5e:2x2"
    arg = {name: p["memory_bytes"]["argument"] for name, p in r["programs"].items()}
    from salt_jax.model.presets import model_config

    assert arg["kd"] - arg["baseline"] >= 4 * param_count(model_config("test-tiny-teacher"))  # + the teacher
    assert "| kd | yes |" in p.stdout and "compiler estimates, not measurements" in p.stdout
    for name in ("kd", "baseline"):  # the estimate: both loops of the 2-layer student costed, the splash kernel added
        e = r["programs"][name]["estimate"]
        assert e["loops"]["student"] == 2 and e["kernel_attention_seconds"] > 0 and 0 < e["mfu"] < 1, e
        assert e["step_seconds"] >= e["flops_per_chip"] / 197e12 and e["label"] == estimate.LABEL
    assert r["kd_over_baseline_estimate"] > 1 and r["run_estimate"]["kd_steps"] == 7
    bad = subprocess.run([sys.executable, "-m", "salt_jax.compile", "--config=configs/test_tiny.py:salt",
                          "--topology=v5e:2x2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: config.salt.teacher='runs/test-tiny-teacher' has no readable checkpoint here"), bad.stderr[-2000:]


def test_a_cpu_host_with_libtpu_trains_on_the_cpu(monkeypatch):
    """libtpu installed and no TPU: an entry point pins JAX to the CPU (even with jax imported already), so JAX
    does not first try (and fail, with a page of libtpu warnings) to open a TPU; importing salt_jax changes
    nothing. An explicit JAX_PLATFORMS is left alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    code = ("import os, salt_jax, jax; assert 'JAX_PLATFORMS' not in os.environ; from salt_jax import cli; "
            "cli.keep_jax_off_an_absent_tpu(); print(jax.default_backend(), jax.device_count(), "
            "os.environ['JAX_PLATFORMS'])")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.split() == ["cpu", "1", "cpu"], (p.stdout, p.stderr[-2000:])
    assert "libtpu" not in p.stderr and "TPU_WORKER_HOSTNAMES" not in p.stderr, p.stderr[-2000:]
    from salt_jax import cli

    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    cli.keep_jax_off_an_absent_tpu()
    assert os.environ["JAX_PLATFORMS"] == "cuda"


@pytest.mark.parametrize("variant", ["online", "cache", "salt_ds"])
def test_the_cross_tokenizer_steps_compile_for_a_slice(v5e, variant):
    """teacher_tokenizer=cross: the KD step takes aligned batches (teacher_seq_len teacher tokens per window, the
    teacher with its own vocabulary), cached as chunk log-likelihoods, and SALT_DS scores the teacher's tokens."""
    c = _tiny("salt_ds" if variant == "salt_ds" else "salt")
    c.salt.teacher_tokenizer, c.salt.teacher_seq_len = "cross", 160
    c.salt.teacher_logits = "cache" if variant == "cache" else "online"
    r = check.check(c, v5e, with_estimate=False)
    assert r["fits"], r
    want = {"kd", "baseline", "scoring"} if variant == "salt_ds" else {"kd", "baseline"}
    assert set(r["programs"]) == want and all(p["fits"] for p in r["programs"].values())
    from salt_jax.model import sharding

    target = programs.target_config(c, "tpu")
    target.model.attention = "xla"  # (lowered here for this machine's CPU devices: no Pallas kernels)
    lowered = programs.Programs(target, sharding.make_mesh(target.mesh), programs.teacher_config(target))
    text = lowered.lowered("scoring" if variant == "salt_ds" else "kd").as_text()
    assert ("8x161xi32" in text) == (variant != "cache")  # the teacher's 160 + 1 tokens (cached: not read)
    assert ("8x128xf32" if variant == "cache" else "8x160xi32") in text  # its chunk values / its tokens' chunks
