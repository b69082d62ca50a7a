"""Few-shot evaluation and generation (salt_jax.eval): the adapter's numbers against a float64 forward and
against lm-eval's own Hugging Face backend, KV-cache decoding against a loop without a cache, sampling,
scores during training, two processes, and the offline tasks."""

import json
import os
import socket
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

import reference
from conftest import REPO
from salt_jax.data.tokenizer import ByteTokenizer
from salt_jax.eval import harness
from salt_jax.eval.engine import Engine, pick
from salt_jax.model import presets, sharding
from salt_jax.model.transformer import Transformer

ALL_DEVICES = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})


def _model(seed=0, **overrides):
    cfg = presets.model_config("test-tiny")
    cfg.max_len = 48
    cfg.update(overrides)
    params = nn.meta.unbox(Transformer(cfg).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"])
    return cfg, params


@pytest.fixture(scope="module")
def tiny():
    """test-tiny (GQA, rope) with a 48-token context, random weights, on all 8 CPU devices."""
    cfg, params = _model()
    mesh = sharding.make_mesh(ALL_DEVICES)
    return cfg, params, Engine(cfg, params, mesh, batch_size=8, chunk=4)


def _f64_logprobs(cfg, params, ids):
    """log softmax of the float64 reference forward: [len(ids), V]."""
    logits = reference.transformer_logits(params, cfg, np.asarray([ids]))[0]
    return reference.log_softmax(logits)


def _request(*args):
    return types.SimpleNamespace(args=args)


def test_loglikelihoods_equal_a_float64_forward(tiny):
    """lm-eval's encoding (context + continuation split, the window of max_len + 1 tokens, BOS for an
    empty context), then the continuation's log-probability and greediness from a float64 forward."""
    cfg, params, engine = tiny
    tok = ByteTokenizer()
    lm = harness.SaltLM(engine, tok)
    pairs = [("def f(x):\n", "    return x"), ("import os", " path"), ("", "print"),
             ("x" * 70 + " = ", "1  # the context is cut"), ("a = 1\n", "\n")]
    pairs += [("ab" * k, "c" * (k % 3 + 1)) for k in range(1, 12)]  # more rows than one batch of 8
    got = lm.loglikelihood([_request(c, x) for c, x in pairs])
    for (context, cont), (lp, greedy) in zip(pairs, got):
        # lm-eval's rule: whitespace ending the context is scored as the start of the continuation
        stripped = context.rstrip()
        context, cont = stripped, context[len(stripped):] + cont
        ctx_ids = tok.encode([context])[0] or [tok.bos_id]
        whole = tok.encode([context + cont])[0]
        cont_ids = whole[len(tok.encode([context])[0]):] if context else tok.encode([cont])[0]
        window = (ctx_ids + cont_ids)[-(cfg.max_len + 1):]
        logp = _f64_logprobs(cfg, params, window[:-1])
        rows = range(len(window) - 1 - len(cont_ids), len(window) - 1)
        want = sum(logp[t, window[t + 1]] for t in rows)
        assert lp == pytest.approx(want, rel=2e-6, abs=2e-5), (context, cont)
        assert greedy == all(int(np.argmax(logp[t])) == window[t + 1] for t in rows)


def test_rolling_loglikelihood_sums_disjoint_windows_of_the_context(tiny):
    """A 130-byte document through a 48-token model: the first window predicts its first 48 tokens after
    BOS, each later one the next 48 (the last, the rest) with a full window of context before them."""
    cfg, params, engine = tiny
    tok = ByteTokenizer()
    lm = harness.SaltLM(engine, tok)
    doc = "".join(f"line_{i} = {i * i}\n" for i in range(12))[:130]
    ids = tok.encode([doc])[0]
    (total,) = lm.loglikelihood_rolling([_request(doc)])
    L, want = cfg.max_len, 0.0
    for start in range(0, len(ids), L):
        end = min(start + L, len(ids))
        inputs = ([tok.bos_id] + ids)[max(end - L, 0):end]
        logp = _f64_logprobs(cfg, params, inputs)
        for i in range(start, end):  # token i sits at input position i - (end - L) (or i in the first window)
            want += logp[i - max(end - L, 0), ids[i]]
    assert total == pytest.approx(want, rel=2e-6)


def _each_and_shared(engine, requests, method="loglikelihood"):
    """((results, tokens run) of each request run whole, the same with shared contexts) for lm-eval requests."""
    out = []
    for share in (False, True):
        lm = harness.SaltLM(engine, ByteTokenizer(), share_contexts=share)
        engine.tokens_run = 0
        out.append((getattr(lm, method)(requests), engine.tokens_run))
    return out


def _assert_same_scores(each, shared):
    """Equal log-likelihoods (1e-5) and greedy flags, request by request (rolling ones are bare floats)."""
    assert len(each) == len(shared)
    for a, b in zip(each, shared):
        a, b = (a, b) if isinstance(a, tuple) else ((a, None), (b, None))
        assert b[0] == pytest.approx(a[0], abs=1e-5) and b[1] == a[1], (a, b)


def test_shared_contexts_score_as_each_request_alone_on_the_offline_tasks():
    """The multiple-choice offline tasks' requests (bytes, a 512-token test-tiny, so no context is cut): scored
    with each question's context run once (the default) they get the log-likelihoods and greedy flags of each
    request run whole (share_contexts=False). The tokens run are counted: every window whole before, each
    context (but its last token) once and each continuation once after; 3x fewer on stdlib_identifier, 2x on
    stdlib_next_line (its choices are whole lines: longer). (Rolling requests: the next test.)"""
    cfg, params = _model(max_len=512)
    engine = Engine(cfg, params, sharding.make_mesh(ALL_DEVICES), batch_size=8)
    lm = harness.SaltLM(engine, ByteTokenizer())
    for task, ratio in (("stdlib_next_line", 2), ("stdlib_identifier", 3)):
        requests = harness.task_requests(task, limit=2)
        (each, before), (shared, after) = _each_and_shared(engine, requests)
        _assert_same_scores(each, shared)
        pairs = [lm._encode_pair(*r.args) for r in requests]
        contexts = {tuple(ctx) for ctx, _ in pairs}
        assert len(contexts) == 2 and before == sum(len(ctx) + len(cont) - 1 for ctx, cont in pairs)
        assert after == sum(len(ctx) - 1 for ctx in contexts) + sum(len(cont) for _, cont in pairs)
        assert before >= ratio * after, (task, before, after)


def test_shared_contexts_longer_than_the_model_stay_exact(tiny):
    """Contexts of ~120 bytes through a 48-token model (cut from the left, lm-eval's window): one-token choices
    see the same cut context and share it; two longer choices of different lengths see differently cut
    contexts and run alone; every score equals the request run whole. Rolling windows share nothing."""
    cfg, _, engine = tiny
    contexts = [f"result_{k} = compute(alpha, beta, offset_{k}) + scale(" * 2 for k in range(5)]
    requests = [_request(c, x) for c in contexts for x in "1xay"]
    requests += [_request(contexts[0], x) for x in ("alpha)", "gamma_1)")]
    lm = harness.SaltLM(engine, ByteTokenizer())
    groups, alone = harness.shared_contexts([(None, *lm._encode_pair(*r.args)) for r in requests], cfg.max_len)
    assert sorted(map(len, groups)) == [4] * 5 and alone == [20, 21]
    (each, before), (shared, after) = _each_and_shared(engine, requests)
    _assert_same_scores(each, shared)
    assert after < before
    document = [_request("".join(f"line_{i} = {i * i}\n" for i in range(12))[:130])]
    (each, before), (shared, after) = _each_and_shared(engine, document, "loglikelihood_rolling")
    assert (shared, after) == (each, before)


@pytest.mark.parametrize("variant", ["rope", "gemma-like"])
def test_greedy_generation_equals_an_argmax_loop_without_cache(variant):
    """KV-cache decoding of left-padded prompts of different lengths gives the tokens a full forward pass
    per step picks; the second model has learned positions, a sliding window on one of two layers and
    soft-capping (every mask and position path of the cache)."""
    extra = {} if variant == "rope" else dict(positions="learned", sliding_window=5, local_layers="LG",
                                             attn_softcap=20.0, final_softcap=10.0)
    cfg, params = _model(seed=3, **extra)
    engine = Engine(cfg, params, sharding.make_mesh(ALL_DEVICES), batch_size=8, chunk=4)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, cfg.vocab_size, size=n).tolist() for n in (1, 6, 13, 9)]
    out = engine.generate(prompts, 10)
    forward = jax.jit(lambda t: Transformer(cfg).apply({"params": params}, t))
    for prompt, got in zip(prompts, out):
        seq = list(prompt)
        for _ in range(10):
            padded = np.zeros((1, cfg.max_len), np.int32)
            padded[0, :len(seq)] = seq
            seq.append(int(np.argmax(np.asarray(forward(padded))[0, len(seq) - 1])))
        assert got == seq[len(prompt):]
    # stop conditions: an EOS id ends a row (and is not returned); `stop` is checked every chunk of 4
    first = out[0]
    cut = engine.generate(prompts[:1], 10, eos_id=first[2])[0]
    assert cut == first[:first.index(first[2])]
    assert engine.generate(prompts[:1], 10, stop=lambda new: len(new) >= 3)[0] == first[:4]


def test_sampling_is_reproducible_and_draws_from_the_tempered_top_k_distribution(tiny):
    cfg, params, engine = tiny
    prompts = [[5, 6, 7], [9]]
    a = engine.generate(prompts, 8, temperature=1.0, seed=11)
    assert a == engine.generate(prompts, 8, temperature=1.0, seed=11)
    assert a != engine.generate(prompts, 8, temperature=1.0, seed=12)
    assert engine.generate(prompts, 8, temperature=0.7, top_k=1, seed=5) == engine.generate(prompts, 8)
    # `pick` against its distribution: softmax(logits / T) over the top 3, renormalised
    logits = jnp.asarray([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0]] * 4000)
    draws = np.asarray(pick(logits, jax.random.key(0), jnp.float32(0.5), jnp.int32(3), jnp.float32(1.0)))
    z = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 3.0]) / 0.5
    want = np.where(np.isin(np.arange(6), [0, 1, 5]), np.exp(z - z.max()), 0.0)
    want /= want.sum()
    freq = np.bincount(draws, minlength=6) / len(draws)
    assert np.all(np.abs(freq - want) < 4 * np.sqrt(want * (1 - want) / len(draws)) + 1e-9), (freq, want)
    # top_p = 0.9 at T = 1: the nucleus is the smallest set of most likely tokens holding 90%
    draws = np.asarray(pick(logits, jax.random.key(1), jnp.float32(1.0), jnp.int32(0), jnp.float32(0.9)))
    p = np.exp(logits[0] - logits[0].max())
    p = np.asarray(p / p.sum())
    order = np.argsort(-p)
    nucleus = order[:np.searchsorted(np.cumsum(p[order]), 0.9) + 1]
    assert set(np.unique(draws)) == set(nucleus.tolist())


# ----------------------------------------------------------------------------- a run, through the command line

def _cli(module, args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=env or os.environ, **kwargs)


# (stdlib_identifier: choices of equal token length share their cut context, so shared scoring is served too)
TASKS = "stdlib_next_line,stdlib_identifier,stdlib_line_completion,stdlib_perplexity"
EVAL_ARGS = ["--tasks=" + TASKS, "--limit=12", "--num_fewshot=1", "--batch_size=8"]


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, cache_dir):
    """A 12-step run with a Hugging Face BPE tokenizer and few-shot scores every 6 steps (config.eval)."""
    from salt_jax.train import loop
    from salt_jax.recipes import tiny_run
    from test_hf import _train_tokenizer

    tok_dir = str(tmp_path_factory.mktemp("bpe"))
    _train_tokenizer(tok_dir)
    c = tiny_run("baseline")
    c.data.cache_dir, c.data.seq_len, c.data.max_files, c.data.heldout_batches = cache_dir, 32, 60, 2
    c.data.tokenizer.kind, c.data.tokenizer.hf_dir = "hf", tok_dir
    c.model.vocab_size, c.model.max_len = 288, 64
    c.train.steps, c.train.heldout_every, c.train.checkpoint_every, c.train.progress = 12, 6, 6, False
    c.optim.warmup_steps = 2
    c.eval.tasks, c.eval.limit, c.eval.num_fewshot, c.eval.batch_size = TASKS, 12, 1, 8
    workdir = str(tmp_path_factory.mktemp("hf_run") / "run")
    loop.run(c, workdir)
    return workdir


def _results(path):
    with open(path) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def cli_scores(hf_run):
    """What `python -m salt_jax.eval` runs (its `run`, in this process: 8 devices) on the run's last
    checkpoint: (lm-eval's table as printed, the flat scores of the eval_results.json written)."""
    import contextlib
    import io

    from salt_jax.eval.runs import evaluate_run

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluate_run(hf_run, TASKS.split(","), limit=12, num_fewshot=1, batch_size=8)
    return printed.getvalue(), harness.scores(_results(os.path.join(hf_run, "eval_results.json")))


def test_scores_during_training_equal_the_command_line_on_the_checkpoint(hf_run, cli_scores):
    from salt_jax.train.metrics import read_metrics

    records = [r for r in read_metrics(os.path.join(hf_run, "metrics.jsonl")) if r["split"] == "fewshot"]
    assert [r["step"] for r in records] == [0, 6, 12]
    with open(os.path.join(hf_run, "summary.json")) as fh:
        assert json.load(fh)["fewshot"]["stdlib_next_line/acc"] == records[-1]["stdlib_next_line/acc"]
    stdout, cli = cli_scores
    assert "stdlib_next_line" in stdout  # lm-eval's table
    for key, value in cli.items():
        assert records[-1][key] == pytest.approx(value, rel=1e-6), key
    for task in TASKS.split(","):  # every request type ran
        assert any(k.startswith(task + "/") for k in cli)
    assert 0.0 <= cli["stdlib_next_line/acc"] <= 1.0 and cli["stdlib_perplexity/bits_per_byte"] > 0


# What lm-eval and the libraries under it print on their own: progress bars, info lines, their warnings.
CHATTER = ("it/s", "%|", "Building contexts", "Running loglikelihood", "num_fewshot has been set",
           "Overwriting default num_fewshot", "Custom kwargs", "--metadata", "simple_evaluate is deprecated",
           "Selected tasks", "Setting random seed", "Using pre-initialized model")


def test_the_console_shows_one_line_per_few_shot_evaluation_and_lm_eval_logs_to_a_file(tmp_path, cache_dir):
    """config.eval.tasks through the command line: salt_jax's one line per evaluation on the console, lm-eval's
    chatter only in <workdir>/lm_eval.log (appended at every evaluation); python -m salt_jax.eval the same,
    with lm-eval's results table."""
    workdir = tmp_path / "run"
    env = dict(os.environ, SALT_JAX_CACHE=cache_dir)
    out = _cli("salt_jax.main", [f"--config={REPO}/configs/test_tiny.py", f"--workdir={workdir}",
                                 "--config.train.steps=4", "--config.train.heldout_every=2",
                                 "--config.train.checkpoint_every=4", "--config.data.max_files=60",
                                 "--config.data.seq_len=32", "--config.data.heldout_batches=2",
                                 "--config.eval.tasks=stdlib_next_line", "--config.eval.limit=4",
                                 "--config.eval.num_fewshot=1", "--config.eval.batch_size=8"], env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    console = out.stdout + out.stderr
    fewshot = [line for line in console.splitlines() if "few-shot at step" in line]
    assert [line.split(" | ")[0].split(" ", 1)[1] for line in fewshot] == [
        "few-shot at step 0", "few-shot at step 2", "few-shot at step 4"], console[-3000:]
    assert all("stdlib_next_line/acc " in line for line in fewshot)
    for text in CHATTER:
        assert text not in console, (text, console[-3000:])
    log = (workdir / "lm_eval.log").read_text()
    for text in ("Building contexts for stdlib_next_line", "Custom kwargs can be passed to `--metadata`",
                 "Running loglikelihood requests", "Overwriting default num_fewshot of stdlib_next_line"):
        assert log.count(text) == 3, (text, log[-3000:])  # steps 0, 2 and 4
    assert "it/s" not in log and "%|" not in log  # the bars are off, not redirected

    cli = _cli("salt_jax.eval", [f"--workdir={workdir}", "--tasks=stdlib_next_line", "--limit=4",
                                 "--num_fewshot=1", "--batch_size=8"], env=env)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "|stdlib_next_line" in cli.stdout and "wrote" in cli.stdout  # lm-eval's table, our line
    for text in CHATTER:
        assert text not in cli.stdout + cli.stderr, (text, cli.stdout[-3000:], cli.stderr[-3000:])
    assert (workdir / "lm_eval.log").read_text().count("Building contexts") == 4


def test_same_scores_as_lm_eval_hf_backend_on_the_exported_model(hf_run, tmp_path):
    """The run exported with `python -m salt_jax.hf export`, scored by lm-eval's own `hf` model (torch),
    against our adapter on the checkpoint: the same per-document log-likelihoods to float32 rounding
    (1e-4 absolute on a choice's ~20 token log-probs, 1e-6 relative on a document's ~3000), hence the same
    accuracy and bits per byte (1e-5)."""
    from lm_eval import simple_evaluate

    from salt_jax.eval import load

    out_dir = str(tmp_path / "hf")
    exported = _cli("salt_jax.hf", ["export", f"--workdir={hf_run}", f"--out={out_dir}"])
    assert exported.returncode == 0, exported.stderr[-2000:]
    tasks = ["stdlib_next_line", "stdlib_identifier", "stdlib_perplexity"]  # (identifier: shared contexts)
    common = dict(tasks=tasks, limit=10, num_fewshot=1, task_manager=harness.task_manager(tasks=tasks),
                  log_samples=True, bootstrap_iters=0, random_seed=1, numpy_random_seed=1, torch_random_seed=1,
                  fewshot_random_seed=1)
    theirs = simple_evaluate(model="hf", model_args=dict(pretrained=out_dir, dtype="float32", max_length=64,
                                                         device="cpu"), batch_size=4, **common)
    loaded = load.load(hf_run)
    lm = harness.SaltLM(Engine(loaded.model_cfg, loaded.params, loaded.mesh, batch_size=8), loaded.tokenizer)
    ours = simple_evaluate(model=lm, **common)
    for task in tasks:
        a, b = ours["samples"][task], theirs["samples"][task]
        assert [s["doc_id"] for s in a] == [s["doc_id"] for s in b]
        for x, y in zip(a, b):
            for rx, ry in zip(x["resps"], y["resps"]):
                vx, vy = rx[0], ry[0]
                vx, vy = (vx[0], vy[0]) if isinstance(vx, (list, tuple)) else (vx, vy)
                assert float(vx) == pytest.approx(float(vy), rel=1e-6, abs=1e-4)
    for task in ("stdlib_next_line", "stdlib_identifier"):
        assert ours["results"][task]["acc,none"] == theirs["results"][task]["acc,none"]
    assert ours["results"]["stdlib_perplexity"]["bits_per_byte,none"] == pytest.approx(
        theirs["results"]["stdlib_perplexity"]["bits_per_byte,none"], rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_scores_of_one(hf_run, cli_scores, tmp_path):
    """Process 0 drives lm-eval, process 1 serves the model calls (scoring, prefill, decoding), 4 devices
    each: the scores of the one-process run (8 devices; written by process 0 only)."""
    two = str(tmp_path / "two.json")
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen([sys.executable, "-m", "salt_jax.eval", f"--workdir={hf_run}", f"--out={two}",
                               f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
                               *EVAL_ARGS], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    a, b = cli_scores[1], harness.scores(_results(two))
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5), key


def test_sample_command_prints_the_greedy_continuation(hf_run):
    from salt_jax.eval.runs import sample

    prompt = "def f(x):\n    return"
    out = _cli("salt_jax.sample", [f"--workdir={hf_run}", "--prompt=def f(x):\\n    return", "--max_tokens=12"])
    assert out.returncode == 0, out.stderr[-2000:]
    (text,) = sample(hf_run, prompt, max_tokens=12)
    assert out.stdout.endswith(prompt + text + "\n"), (out.stdout[-500:], text)  # (print adds the newline)


def test_offline_tasks_are_held_out_files_and_load_without_network():
    from salt_jax.data.documents import in_heldout
    from salt_jax.eval.tasks import OFFLINE_TASKS, utils

    manager = harness.task_manager(tasks=list(OFFLINE_TASKS))
    assert set(OFFLINE_TASKS) <= set(manager.all_subtasks)
    for task in ("next_line", "identifier", "line_completion", "perplexity"):
        test = utils.read_docs(task, "test")
        assert len(test) >= 40
        assert all(in_heldout(d["source"], 0.05) for d in test)
        if task != "perplexity":
            shots = utils.read_docs(task, "fewshot")
            assert not {d["source"] for d in shots} & {d["source"] for d in test}  # other files
        for d in test:
            if "choices" in d:  # the gold choice and distinct distractors, none of them blank
                assert 0 <= d["gold"] < len(d["choices"]) == len({c.strip() for c in d["choices"]}) == 4
                assert all(c.strip() for c in d["choices"])
            assert (d.get("context") or d.get("text")).strip()
