"""Mixtures of corpora (config.data.mixture): the spec, the draw by weight, batches across hosts and resumes,
held-out loss per corpus (against a NumPy float64 reference), SALT_DS on a mixture, the report's table."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from salt_jax.config import validate
from salt_jax.data import batches as batches_lib
from salt_jax.data import mixture, store
from salt_jax.errors import UserError
from salt_jax.train import loop
from salt_jax.train.metrics import read_metrics

import reference
import salt_run
from conftest import REPO


def _write_corpus(directory, field: str, modules: list[str], chunk: int) -> None:
    """JSONL records of `chunk` characters of standard-library modules' text, in field `field`."""
    os.makedirs(directory, exist_ok=True)
    stdlib = os.path.dirname(os.__file__)
    for name in modules:
        text = open(os.path.join(stdlib, name), encoding="utf-8").read()
        with open(os.path.join(directory, f"{name}.jsonl"), "w") as fh:
            for i in range(0, len(text), chunk):
                fh.write(json.dumps({field: text[i:i + chunk]}) + "\n")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two corpora: prose (field text) and code (field content: the component's own text_field)."""
    root = tmp_path_factory.mktemp("corpora")
    _write_corpus(str(root / "prose"), "text", ["textwrap.py", "glob.py"], 300)
    _write_corpus(str(root / "code"), "content", ["shlex.py"], 300)
    return f"prose:3={root}/prose/*.jsonl,code:1={root}/code/*.jsonl|text_field=content"


def _config(spec: str, cache_dir: str, method: str = "baseline"):
    from salt_jax.recipes import tiny_run

    c = tiny_run(method)
    c.data.cache_dir, c.data.mixture, c.data.seq_len, c.data.heldout_batches = cache_dir, spec, 32, 2
    c.train.steps, c.train.log_every, c.train.heldout_every, c.train.checkpoint_every = 12, 4, 6, 6
    c.train.progress, c.optim.warmup_steps = False, 2
    return c


# ------------------------------------------------------------------------------------------------- the spec


@pytest.mark.parametrize("spec,message", [
    ("web=0.7:/x", "'web=0.7:/x' is not NAME:WEIGHT=PATH"),
    ("web:0=/x", "component 'web' has weight '0'; weights must be positive"),
    ("web:-1=/x,code:1=/y", "component 'web' has weight '-1'; weights must be positive"),
    ("web:1=/x|textfield=body", "component 'web' has unknown option 'textfield=body'"),
    ("web:1=/x|source=hdf5", "component 'web' has unknown source 'hdf5'"),
    ("web:1=/x,web:1=/y", "component name 'web' is used twice"),
    ("web:1=", "component 'web' names no path"),
])
def test_a_bad_spec_is_one_line_naming_the_field(spec, message, tiny_config):
    tiny_config.data.mixture = spec
    with pytest.raises(UserError) as e:
        validate(tiny_config)
    assert str(e.value).startswith("config.data.mixture: ") and message in str(e.value) and "\n" not in str(e.value)


def test_a_missing_path_names_the_component(tmp_path, corpora):
    c = _config(corpora + f",web:1={tmp_path}/none/*.jsonl", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"^config\.data\.mixture \(web: path\): no file matches '.*/none/\*\.jsonl'"):
        store.build_store(c.data)


def test_spec_components_paths_and_options(corpora):
    c = _config("a:3=/d/a/*.jsonl,/d/b/*.jsonl,b:1=c4/en:3.1.0|source=tfds|text_field=body|max_files=2", "")
    a, b = mixture.parse(c.data)
    assert (a.name, a.weight, a.data.source, a.data.path, a.data.mixture) == ("a", 0.75, "text",
                                                                             "/d/a/*.jsonl,/d/b/*.jsonl", "")
    assert (b.name, b.weight, b.data.source, b.data.tfds_name, b.data.text_field, b.data.max_files) == (
        "b", 0.25, "tfds", "c4/en:3.1.0", "body", 2)
    assert b.data.seq_len == c.data.seq_len and b.data.tokenizer == c.data.tokenizer  # shared fields
    assert list(mixture.counts([3, 1])) == [49152, 16384] and mixture.counts([1, 1, 1]).sum() == mixture.PERIOD


def test_a_hugging_face_dataset_is_a_component(tmp_path, corpora):
    """source=hf in a mixture: its store is the one a single-corpus run on that dataset builds (shared), and its
    options (hf_heldout_split) are its own."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    texts = [f"record {i}: " + "the quick brown fox " * (i % 7 + 2) for i in range(300)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts[:250]}),
                          "validation": datasets.Dataset.from_dict({"text": texts[250:]})}
                         ).save_to_disk(str(tmp_path / "saved"))
    spec = corpora + f",hub:2={tmp_path / 'saved'}|source=hf|hf_heldout_split=validation"
    c = _config(spec, str(tmp_path / "cache"))
    validate(c)
    hub = mixture.parse(c.data)[2]
    assert (hub.weight, hub.data.source, hub.data.hf_dataset, hub.data.hf_heldout_split) == (
        1 / 3, "hf", str(tmp_path / "saved"), "validation")
    mixed, tok = store.build_store(c.data)
    single = c.data.copy_and_resolve_references()
    single.mixture, single.source, single.hf_dataset, single.hf_heldout_split = "", "hf", str(tmp_path / "saved"), \
        "validation"
    alone, _ = store.build_store(single)
    assert mixed.names == ["prose", "code", "hub"] and mixed.stores[2].directory == alone.directory
    assert (alone.meta["splits"]["train"]["documents"], alone.meta["splits"]["heldout"]["documents"]) == (250, 50)
    np.testing.assert_array_equal(
        alone.heldout.tokens(), np.concatenate([np.asarray(ids + [tok.eos_id]) for ids in tok.encode(texts[250:])]))


# ------------------------------------------------------------------------------------------------- the draw


@pytest.mark.parametrize("seed", [0, 1])
def test_each_corpus_share_is_its_weight_within_3_standard_errors(seed):
    """9,600 examples (600 steps of 16), under one period: the mix is a draw without replacement from the
    period's slots, so a share's standard error is at most a multinomial's, sqrt(w (1 - w) / n)."""
    weights, n_rows = [0.6, 0.3, 0.1], [100_000, 3700, 1000]  # the small ones cycle through epochs
    counts = mixture.counts(weights)
    comp = np.concatenate([batches_lib.mixture_indices(s, 16, counts, n_rows, seed)[0] for s in range(600)])
    n = len(comp)
    for c, w in enumerate(weights):
        share = np.mean(comp == c)
        assert abs(share - w) < 3 * np.sqrt(w * (1 - w) / n), (c, share, w)


def test_whole_periods_hold_exact_counts_and_each_corpus_visits_its_rows_once_per_epoch():
    counts, n_rows = [600, 300, 100], [1200, 400, 200]  # period 1000; 100 steps of 40 = 4 periods
    comp, row = map(np.concatenate, zip(*[batches_lib.mixture_indices(s, 40, counts, n_rows, 3) for s in range(100)]))
    for p in range(4):
        assert list(np.bincount(comp[p * 1000:(p + 1) * 1000], minlength=3)) == counts
    for c in range(3):  # 2, 3 and 2 whole epochs: every row equally often
        assert list(np.bincount(row[comp == c], minlength=n_rows[c])) == [counts[c] * 4 // n_rows[c]] * n_rows[c]
    again = batches_lib.mixture_indices(37, 40, counts, n_rows, 3)  # pure in the step
    np.testing.assert_array_equal(again[0], comp[1480:1520])
    np.testing.assert_array_equal(again[1], row[1480:1520])
    assert not np.array_equal(batches_lib.mixture_indices(37, 40, counts, n_rows, 4)[0], comp[1480:1520])  # seed


def test_without_a_mixture_the_draw_is_what_it_was():
    """data.mixture="" reads the rows it read before mixtures existed (indices computed by that code)."""
    assert batches_lib.batch_indices(123, 8, 1000, 5).tolist() == [312, 108, 253, 10, 468, 321, 685, 448]
    assert batches_lib.batch_indices(130, 8, 1000, 5).tolist() == [185, 332, 994, 507, 335, 627, 608, 140]
    assert batches_lib.batch_indices(7, 16, 10**9, 3, slice(0, 4)).tolist() == [277682444, 180469188, 957705236,
                                                                                  510581524]


@pytest.fixture(scope="module")
def mixed(corpora, cache_dir):
    cache, tok = store.build_store(_config(corpora, cache_dir).data)
    return cache, tok


def test_batches_are_the_same_on_1_and_2_hosts_and_after_a_restart(mixed, corpora, cache_dir, monkeypatch):
    cache, _ = mixed
    assert isinstance(cache, mixture.MixtureStore) and list(cache.counts) == [49152, 16384]
    one = batches_lib.training_batches(cache, 8, seed=5)
    uninterrupted = [one.numpy(s) for s in range(40)]
    idx = np.concatenate([one.indices(s) for s in range(40)])
    assert set(np.searchsorted(cache.train.offsets, idx, side="right") - 1) == {0, 1}
    for s in (0, 17, 39):  # each row is its corpus's row, read from that corpus's own store
        for k, i in enumerate(one.indices(s)):
            c = int(np.searchsorted(cache.train.offsets, i, side="right") - 1)
            own = cache.stores[c].train.rows([i - cache.train.offsets[c]])[0]
            np.testing.assert_array_equal(uninterrupted[s][k], own)
    reopened, _ = store.build_store(_config(corpora, cache_dir).data)  # a restarted process resuming at step 23
    fresh = batches_lib.training_batches(reopened, 8, seed=5)
    for s in range(23, 40):
        np.testing.assert_array_equal(fresh.numpy(s), uninterrupted[s])
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for p in (0, 1):  # two hosts: each reads its half of the same global batch
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        for s in (0, 23, 39):
            np.testing.assert_array_equal(fresh.numpy(s), uninterrupted[s][p * 4:(p + 1) * 4])


def test_one_tokenizer_for_the_mixture_trained_on_equal_shares(corpora, tmp_path):
    c = _config(corpora, str(tmp_path))
    c.data.tokenizer.kind, c.data.tokenizer.vocab_size, c.data.tokenizer.max_train_lines = "sentencepiece", 400, 100
    cache, tok = store.build_store(c.data)
    assert {x.meta["tokenizer"] for x in cache.stores} == {tok.fingerprint()}
    parts = mixture.parse(c.data)
    from salt_jax.data import sources

    sample = mixture.TokenizerSample(parts, [sources.make_source(p.data) for p in parts], 100)
    lines = list(sample.documents("train"))
    assert len(lines) == 100  # 50 from each corpus, whatever the weights (3:1)
    c.data.mixture = c.data.mixture.replace("prose:3", "prose:1")
    again, tok2 = store.build_store(c.data)
    assert tok2.fingerprint() == tok.fingerprint() and [x.directory for x in again.stores] == [
        x.directory for x in cache.stores]  # re-weighting re-tokenizes nothing
    assert again.directory != cache.directory  # but what depends on the batches is keyed apart


def test_salt_ds_pool_is_drawn_by_weight(mixed):
    cache, _ = mixed
    rows = cache.pool_rows(96, seed=0)
    comp = np.searchsorted(cache.train.offsets, rows, side="right") - 1
    assert len(np.unique(rows)) == 96 and list(np.bincount(comp)) == [72, 24]
    with pytest.raises(UserError, match="config.salt.ds_pool_size=100000 exceeds"):
        cache.pool_rows(100_000, 0)


# ------------------------------------------------------------------------------------------------ the runs


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory, corpora, cache_dir):
    workdir = str(tmp_path_factory.mktemp("mixture-run"))
    loop.run(_config(corpora, cache_dir), workdir)
    return workdir


def _reference_loss(params, model_cfg, rows: np.ndarray) -> tuple[float, float]:
    """Mean next-token CE and accuracy over the rows' non-pad targets, float64."""
    logits = reference.transformer_logits(params, model_cfg, rows[:, :-1])
    targets = rows[:, 1:]
    mask = targets != 0
    ce = reference.next_token_ce(logits, targets)
    return float(ce[mask].sum() / mask.sum()), float((logits.argmax(-1) == targets)[mask].mean())


def test_heldout_loss_per_corpus_equals_a_float64_reference(mixture_run, corpora, cache_dir, mixed):
    cache, _ = mixed
    c = _config(corpora, cache_dir)
    evals = [r for r in read_metrics(os.path.join(mixture_run, "metrics.jsonl")) if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 6, 12]
    last = evals[-1]
    params = salt_run.params(mixture_run, 12)
    want = {}
    for name in ("prose", "code"):
        rows = cache.heldout_splits[name].rows(np.arange(2 * 8))  # heldout_batches=2 of batch 8, in order
        want[name] = _reference_loss(params, c.model, rows)
        assert last[f"loss/{name}"] == pytest.approx(want[name][0], rel=2e-5)
        assert last[f"accuracy/{name}"] == pytest.approx(want[name][1], abs=1e-9)
        assert last[f"tokens/{name}"] == 2 * 8 * 32
    assert last["loss"] == pytest.approx(0.75 * want["prose"][0] + 0.25 * want["code"][0], rel=2e-5)
    assert abs(last["loss/prose"] - last["loss/code"]) > 0.01  # two corpora, two losses
    events = b"".join(open(os.path.join(mixture_run, "tensorboard", f), "rb").read()
                      for f in os.listdir(os.path.join(mixture_run, "tensorboard")))
    assert b"eval/loss/prose" in events and b"eval/loss/code" in events
    with open(os.path.join(mixture_run, "summary.json")) as fh:
        summary = json.load(fh)
    assert summary["final_eval_loss_per_corpus"] == {"prose": last["loss/prose"], "code": last["loss/code"]}
    assert [m["name"] for m in summary["corpus"]["mixture"]] == ["prose", "code"]
    assert "mixture of prose (weight 0.75): text source" in loop.describe_corpus(summary["corpus"])


def _cli(workdir: str, spec: str, cache_dir: str, extra=()) -> subprocess.CompletedProcess:
    """The CLI on _config's run (configs/test_tiny.py with the same overrides)."""
    flags = {"data.cache_dir": cache_dir, "data.mixture": spec, "data.seq_len": 32, "data.heldout_batches": 2,
             "train.steps": 12, "train.log_every": 4, "train.heldout_every": 6, "train.checkpoint_every": 6,
             "train.progress": False, "optim.warmup_steps": 2}
    args = [sys.executable, "-m", "salt_jax.main", f"--config={os.path.join(REPO, 'configs', 'test_tiny.py')}",
            f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in flags.items()), *extra]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_kill_9_then_resume_ends_where_the_uninterrupted_run_does(mixture_run, corpora, cache_dir, tmp_path):
    """SIGKILL after step 9 (checkpoint 6 on disk), then the same command: the resumed run reads the batches of
    steps 7-12 afresh and ends with the uninterrupted run's parameters, bitwise, and its eval lines."""
    workdir = str(tmp_path / "killed")
    out = _cli(workdir, corpora, cache_dir, ["--config.train.debug_kill=step:9"])
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    out = _cli(workdir, corpora, cache_dir)
    assert out.returncode == 0 and "resuming" in out.stdout + out.stderr, out.stderr[-2000:]
    salt_run.same_params(salt_run.params(mixture_run), salt_run.params(workdir))
    lines = lambda w: [r for r in read_metrics(os.path.join(w, "metrics.jsonl")) if r["split"] == "eval"]  # noqa: E731
    assert [{k: v for k, v in r.items() if k != "train_seconds"} for r in lines(workdir)] == [
        {k: v for k, v in r.items() if k != "train_seconds"} for r in lines(mixture_run)]


def test_salt_ds_on_a_mixture_and_the_report_table(mixture_run, corpora, cache_dir, teacher_dir, tmp_path):
    c = _config(corpora, cache_dir, "salt_ds")
    c.salt.teacher, c.salt.kd_steps = teacher_dir, 6
    workdir = str(tmp_path / "salt_ds")
    loop.run(c, workdir)
    with open(os.path.join(workdir, "selection.json")) as fh:
        selection = json.load(fh)
    assert selection["pool"] == 96 and selection["kept"] == 48  # 6 KD steps x 8 / keep 0.5; drawn 72 + 24
    from salt_jax.experiment import report, writeup

    results = report.analyse({"baseline": [report.RunOutputs(mixture_run)], "salt_ds": [report.RunOutputs(workdir)]}, None)
    text = "\n".join(writeup._corpus_markdown(results))
    assert "| method | overall | prose | code |" in text
    for name in ("baseline", "salt_ds"):
        m = results["methods"][name]
        assert f"| {name} | {m['final_loss_mean']:.4f} | {m['final_loss_per_corpus']['prose']:.4f} | " in text


def test_cached_teacher_logits_are_the_teachers_on_the_mixtures_batches(corpora, cache_dir, teacher_dir, mixed):
    """teacher_logits=cache on a mixture: the cache of KD step s holds the teacher's log-probs of the targets of
    the mixture's batch s (against the float64 reference teacher), keyed by the mixture's directory."""
    from salt_jax import teacher_cache
    from salt_jax.config import base_config

    c = _config(corpora, cache_dir, "salt-cached")
    c.salt.teacher, c.salt.kd_steps, c.salt.cache_k, c.salt.cache_dtype = teacher_dir, 2, 4, "float32"
    manifest = teacher_cache.build(c)
    assert manifest["store"] == os.path.basename(mixed[0].directory) and manifest["steps"] == 2
    params, teacher_model = salt_run.params(teacher_dir), base_config("test-tiny-teacher").model
    batches = batches_lib.training_batches(mixed[0], 8, c.data.seed)
    for step in (0, 1):
        with np.load(os.path.join(manifest["directory"], f"step{step:07d}-rows0-8.npz")) as f:
            got = f["target_logp"]
        rows = batches.numpy(step)
        logp = reference.log_softmax(reference.transformer_logits(params, teacher_model, rows[:, :-1]))
        np.testing.assert_allclose(got, np.take_along_axis(logp, rows[:, 1:, None], -1)[..., 0], rtol=1e-4,
                                   atol=1e-4)
