"""SALT across tokenizers, end to end: a student keeps its own SentencePiece tokenizer and distils from a teacher
that tokenizes otherwise (conftest's byte-level teacher, or a Hugging Face model with its own BPE tokenizer).

Through the command line (salt_run.RUN: KD for steps 1-7 of 12): the choice is written to config.json and the
log, online and cached teachers give the same run, a kill -9 inside the KD phase resumes to the uninterrupted
run's parameters, two processes train what one does, and what does not fit is counted or refused in one line.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import salt_run
from salt_jax.train.metrics import read_metrics

SP_STUDENT = ["--config.data.tokenizer.kind=sentencepiece", "--config.data.tokenizer.vocab_size=384",
              "--config.model.vocab_size=384", "--config.data.tokenizer.max_train_lines=3000"]
CACHED = ["--config.salt.teacher_logits=cache"]


def _ok(out):
    assert out.returncode == 0, out.stdout[-3000:] + (out.stderr or "")[-3000:]
    return out


def _train_lines(workdir):
    return [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]


def _same_metrics(a, b, rel=1e-5):
    ra, rb = read_metrics(os.path.join(a, "metrics.jsonl")), read_metrics(os.path.join(b, "metrics.jsonl"))
    assert [(r["split"], r["step"]) for r in ra] == [(r["split"], r["step"]) for r in rb]
    for x, y in zip(ra, rb):
        for key in ("loss", "kd_loss", "teacher_ntp_loss", "accuracy", "aligned_fraction"):
            if x.get(key) is not None:
                assert y[key] == pytest.approx(x[key], rel=rel, abs=1e-6), (x["split"], x["step"], key)


@pytest.fixture(scope="module")
def cross_reference(tmp_path_factory, cache_dir, teacher_dir):
    """The uninterrupted cross-tokenizer run (online teacher), through the CLI in one process."""
    workdir = str(tmp_path_factory.mktemp("cross") / "online")
    out = _ok(salt_run.cli(workdir, cache_dir, teacher_dir, SP_STUDENT))
    return workdir, out.stdout


@pytest.fixture(scope="module")
def cross_cached(tmp_path_factory, cache_dir, teacher_dir):
    """The same run with the teacher cache (teacher_logits=cache), its output."""
    workdir = str(tmp_path_factory.mktemp("cross") / "cached")
    return workdir, _ok(salt_run.cli(workdir, cache_dir, teacher_dir, SP_STUDENT + CACHED)).stdout


def test_the_choice_is_explicit_and_the_kd_phase_distils_across_tokenizers(cross_reference):
    workdir, log = cross_reference
    written = json.load(open(os.path.join(workdir, "config.json")))
    assert written["salt"]["teacher_tokenizer"] == "cross"  # auto, resolved and recorded
    assert written["data"]["tokenizer"]["kind"] == "sentencepiece" and written["model"]["vocab_size"] == 384
    first = log.index("teacher tokenizer: cross")
    assert first < log.index("token store")  # among the run's first lines, before anything is built
    assert "the teacher tokenizes with bytes-v1" in log and "teacher sequence: " in log
    assert os.path.exists(os.path.join(workdir, "tokenizer", "tokenizer.model"))  # the student's own
    lines = _train_lines(workdir)
    kd = [r for r in lines if r["kd_steps"]]
    assert kd and all(0.9 < r["aligned_fraction"] <= 1.0 and r["truncated_chunks"] == 0
                      and r["unencodable_pieces"] == 0 and r["kd_loss"] > 0 for r in kd)
    assert "aligned_fraction" not in lines[-1]  # (after the KD phase: plain next-token training)
    # the teacher's loss is on the aligned text in nats per student token: a byte-level teacher of 6K
    # parameters spends more nats on a SentencePiece token's bytes than ln(384) would
    assert all(r["teacher_ntp_loss"] > np.log(384) for r in kd)


def test_online_and_cached_teachers_give_the_same_run_and_a_kill_resumes_it(cross_reference, cross_cached,
                                                                          cache_dir, teacher_dir, tmp_path):
    reference, _ = cross_reference
    cached, log = cross_cached
    manifest = json.load(open(os.path.join(cached, "teacher_cache.json")))
    assert manifest["kind"] == "alm" and manifest["teacher_tokenizer"] == "bytes-v1"
    assert manifest["bytes_per_token"] < 12  # two float32 chunk values per student position (+ the npz header)
    assert "parameters, fingerprint" in log  # the teacher ran once, to build the cache
    _same_metrics(reference, cached)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), salt_run.params(reference),
                 salt_run.params(cached))

    killed = str(tmp_path / "killed")
    out = salt_run.cli(killed, cache_dir, teacher_dir, SP_STUDENT + ["--config.train.debug_kill=step:5"])
    assert out.returncode != 0 and os.path.isdir(os.path.join(killed, "checkpoints", "3"))
    out = _ok(salt_run.cli(killed, cache_dir, teacher_dir, SP_STUDENT))
    assert "resuming" in out.stdout
    salt_run.same_params(salt_run.params(reference), salt_run.params(killed))


def test_two_processes_align_and_train_what_one_does(cross_reference, cache_dir, teacher_dir, tmp_path):
    """Each process aligns only its rows of every batch (and measures the teacher's length on the same global
    rows): the two-process run equals the one-process run."""
    reference, log = cross_reference
    two = str(tmp_path / "two")
    outs = salt_run.two_processes(two, cache_dir, teacher_dir, SP_STUDENT)
    length = [ln for ln in log.splitlines() if "teacher sequence:" in ln][0].split("teacher sequence: ")[1]
    assert all(length in o for o in outs)
    _same_metrics(reference, two)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), salt_run.params(reference),
                 salt_run.params(two))


def test_what_does_not_fit_is_counted_or_refused_in_one_line(cross_cached, cache_dir, teacher_dir, tmp_path):
    # a teacher length too small for the text: the run goes on, the chunks past it are counted per line
    short = str(tmp_path / "short")
    _ok(salt_run.cli(short, cache_dir, teacher_dir, SP_STUDENT + ["--config.salt.teacher_seq_len=16"]))
    kd = [r for r in _train_lines(short) if r["kd_steps"]]
    assert all(r["truncated_chunks"] > 0 and r["aligned_fraction"] < 0.7 for r in kd)
    # top-k KD needs a shared vocabulary: one line naming the field
    out = salt_run.cli(str(tmp_path / "topk"), cache_dir, teacher_dir,
                       SP_STUDENT + ["--config.salt.kd_loss=topk_kl", "--config.salt.kd_topk=8"])
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
        "error: config.salt.kd_loss='topk_kl': not available across tokenizers (config.salt.teacher_tokenizer=cross);"
        " use forward_kl or reverse_kl (ALM's binarised divergence; top-k needs a shared vocabulary)")
    assert not (tmp_path / "topk").exists()
    # a cache whose manifest says another tokenizer pair: one line, the cache left as it is
    cached, _ = cross_cached
    directory = json.load(open(os.path.join(cached, "teacher_cache.json")))["directory"]
    path = os.path.join(directory, "manifest.json")
    manifest = json.load(open(path))
    files = sorted(os.listdir(directory))
    try:
        json.dump(dict(manifest, teacher_tokenizer="hf-tok-0123456789abcdef"), open(path, "w"))
        out = salt_run.cli(str(tmp_path / "other"), cache_dir, teacher_dir, SP_STUDENT + CACHED)
        assert out.returncode == 2, out.stdout[-2000:]
        line = out.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {directory}: the teacher cache holds alm targets for teacher tokenizer "
                               "hf-tok-0123456789abcdef") and "delete the directory to rebuild it" in line
        assert sorted(os.listdir(directory)) == files and not (tmp_path / "other").exists()
    finally:
        json.dump(manifest, open(path, "w"))


# ----------------------------------------------------------------------------- a Hugging Face teacher

@pytest.fixture(scope="module")
def hf_bpe_teacher(tmp_path_factory):
    """A tiny random Llama (vocabulary 288, 64 positions) with its own byte-level BPE tokenizer.json (280 ids)."""
    from test_hf import tiny_hf_teacher

    directory = str(tmp_path_factory.mktemp("hf_bpe_teacher"))
    tiny_hf_teacher(directory, seed=3)
    return directory


def test_a_hugging_face_teacher_with_its_own_tokenizer_teaches_a_sentencepiece_student(hf_bpe_teacher, cache_dir,
                                                                                      tmp_path):
    """A SentencePiece student keeps its tokenizer (it used to be switched to the teacher's without a word, its
    vocabulary changed to the teacher's), trained or given as a model file; online and cached through both
    phases, the same numbers. Asked to (teacher_tokenizer=adopt), the student takes the teacher's tokenizer and
    vocabulary, and says so."""
    from salt_jax.data import tokenizer as tokenizer_lib

    online = str(tmp_path / "online")
    _ok(salt_run.cli(online, cache_dir, hf_bpe_teacher, SP_STUDENT))
    model_file = os.path.join(online, "tokenizer", "tokenizer.model")
    own = SP_STUDENT + [f"--config.data.tokenizer.model_file={model_file}"]
    runs = {}
    for name, extra in (("given", own), ("cached", own + CACHED)):
        runs[name] = str(tmp_path / name)
        out = _ok(salt_run.cli(runs[name], cache_dir, hf_bpe_teacher, extra))
        assert "teacher tokenizer: cross" in out.stdout
        written = json.load(open(os.path.join(runs[name], "config.json")))
        assert (written["salt"]["teacher_tokenizer"], written["data"]["tokenizer"]["kind"],
                written["data"]["tokenizer"]["model_file"], written["model"]["vocab_size"]) == (
            "cross", "sentencepiece", model_file, 384)
        kd = [r for r in _train_lines(runs[name]) if r["kd_steps"]]
        assert all(r["aligned_fraction"] > 0.85 and r["unencodable_pieces"] == 0 for r in kd)
    assert json.load(open(os.path.join(online, "config.json")))["salt"]["teacher_tokenizer"] == "cross"
    _same_metrics(runs["given"], runs["cached"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 salt_run.params(runs["given"]), salt_run.params(runs["cached"]))
    assert tokenizer_lib.kept(runs["given"]).fingerprint() == tokenizer_lib.SentencePieceTokenizer(
        model_file).fingerprint()

    adopted = str(tmp_path / "adopted")
    out = _ok(salt_run.cli(adopted, cache_dir, hf_bpe_teacher, ["--config.train.steps=3", "--config.salt.kd_steps=2",
                                                                 "--config.salt.teacher_tokenizer=adopt"]))
    assert "teacher tokenizer: adopt" in out.stdout
    written = json.load(open(os.path.join(adopted, "config.json")))
    assert (written["salt"]["teacher_tokenizer"], written["data"]["tokenizer"]["kind"],
            written["model"]["vocab_size"]) == ("adopt", "hf", 288)
    shutil.rmtree(adopted)


def test_resolution_rules(teacher_dir, tiny_config):
    """auto -> same / cross for a salt_jax teacher; an explicit choice is kept; adopt takes a byte teacher's
    tokenizer; a resolved config resolves to itself."""
    from salt_jax.config import resolved, set_method

    c = tiny_config
    set_method(c, "salt")
    c.salt.teacher = teacher_dir
    assert resolved(c).salt.teacher_tokenizer == "same"  # bytes and bytes
    c.data.tokenizer.kind, c.data.tokenizer.vocab_size, c.model.vocab_size = "sentencepiece", 384, 384
    r = resolved(c)
    assert r.salt.teacher_tokenizer == "cross" and resolved(r).to_dict() == r.to_dict()
    c.salt.teacher_tokenizer = "same"
    assert resolved(c).salt.teacher_tokenizer == "same"  # (the run then refuses it: test_refused_runs.py)
    c.salt.teacher_tokenizer = "adopt"
    r = resolved(c)
    assert (r.salt.teacher_tokenizer, r.data.tokenizer.kind, r.model.vocab_size) == ("adopt", "bytes", 259)
    set_method(c, "baseline")
    c.salt.teacher_tokenizer = "auto"
    assert resolved(c).salt.teacher_tokenizer == "auto"  # no teacher: nothing to decide


@pytest.mark.parametrize("variant", ["salt_ds", "adaptive"])
def test_salt_ds_and_the_adaptive_switch_across_tokenizers(variant, cache_dir, teacher_dir, tmp_path):
    """SALT_DS: the teacher scores the pool in its own tokenization (its score file keyed by its length too) and
    the KD phase trains on the kept rows, aligned. The adaptive switch compares the student's loss with the
    teacher's on the aligned text, per student token, and ends the KD phase."""
    workdir = str(tmp_path / variant)
    extra = (["--config.salt.method=salt_ds"] if variant == "salt_ds" else
             ["--config.salt.switch=adaptive", "--config.salt.adaptive_min_steps=2", "--config.salt.adaptive_ema=0.5",
              "--config.salt.adaptive_margin=10"])
    out = _ok(salt_run.cli(workdir, cache_dir, teacher_dir, SP_STUDENT + extra))
    kd = [r for r in _train_lines(workdir) if r["kd_steps"]]
    assert kd and all(r["aligned_fraction"] > 0.9 for r in kd)
    if variant == "salt_ds":
        selection = json.load(open(os.path.join(workdir, "selection.json")))
        assert 0 < selection["kept"] < selection["pool"] and np.isfinite(selection["score_quantiles_kept"]["p50"])
        store = [ln for ln in out.stdout.splitlines() if "store " in ln and "corpus:" in ln][0]
        scores = os.path.join(cache_dir, "tokens", store.split("store ")[1].rstrip(")"), "scores")
        assert any("-U" in name for name in os.listdir(scores))
    else:  # the switch came before the schedule's end (kd_steps=7): the student caught up within the margin
        assert "KD phase over at step 2 (the student caught up with the teacher)" in out.stdout
