"""A run refused for its teacher is refused before any tokenizer is trained or store built, and leaves no files.

The teacher (conftest's teacher_dir) tokenized with bytes; a student that would train a SentencePiece model
is refused from the configs alone, its workdir (and the parent it created) gone, its cache empty. A workdir
that existed keeps exactly what it held. A SentencePiece student whose model can only be compared once
trained is trained first and refused before the store is built.
"""

import os

import pytest

import salt_run
from salt_jax.errors import UserError

SP_STUDENT = ["--config.data.tokenizer.kind=sentencepiece", "--config.data.tokenizer.vocab_size=256",
              "--config.salt.teacher_tokenizer=same"]  # (auto would distil across the two tokenizers)


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, ds, fs in os.walk(root) for n in ds + fs)


def _refused(out):
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: config.salt.teacher: the teacher was trained with tokenizer bytes-v1 (259 ids), "
                           "the student would train a SentencePiece tokenizer of 256 ids"), out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_mismatched_teacher_tokenizer_is_refused_before_building_and_leaves_nothing(teacher_dir, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    existing = tmp_path / "existing"  # a workdir that was there before, with the user's files
    (existing / "notes").mkdir(parents=True)
    (existing / "notes" / "a.txt").write_text("mine")
    (existing / "config.py").write_text("x = 1")
    before = {p: open(os.path.join(existing, p), "rb").read() for p in _files(existing)
              if os.path.isfile(os.path.join(existing, p))}

    fresh = tmp_path / "new" / "run"  # neither it nor its parent exists
    _refused(salt_run.cli(str(fresh), str(cache), teacher_dir, SP_STUDENT + [f"--config.data.cache_dir={cache}"]))
    assert not (tmp_path / "new").exists()  # the workdir and the parent the command created are gone
    assert _files(cache) == []  # no tokenizer trained, no store built

    _refused(salt_run.cli(str(existing), str(cache), teacher_dir, SP_STUDENT + [f"--config.data.cache_dir={cache}"]))
    assert {p: open(os.path.join(existing, p), "rb").read() for p in _files(existing)
            if os.path.isfile(os.path.join(existing, p))} == before
    assert _files(existing) == ["config.py", "notes", "notes/a.txt"]  # nothing added (no .lock, no checkpoints/)
    assert _files(cache) == []


def test_a_sentencepiece_student_like_its_teacher_is_checked_once_trained(teacher_dir, tiny_config, tmp_path,
                                                                          monkeypatch):
    """The teacher's record says a SentencePiece tokenizer of 400 ids: the student's (same kind and size) is
    trained, compared, and refused before its store is built; the workdir it created is gone."""
    from salt_jax.config import set_method
    from salt_jax.kd import teacher as teacher_lib
    from salt_jax.train import loop

    recorded = teacher_lib.recorded_tokenizer

    def sentencepiece_teacher(path):
        return dict(recorded(path), fingerprint="sp-0123456789abcdef", tokenizer_vocab=400, vocab=400,
                    model_file="/teacher/tokenizer/tokenizer.model")

    monkeypatch.setattr(teacher_lib, "recorded_tokenizer", sentencepiece_teacher)
    c = tiny_config
    set_method(c, "salt")
    c.salt.teacher, c.salt.kd_steps = teacher_dir, 4
    c.salt.teacher_tokenizer = "same"  # (auto: a student SentencePiece model of another size distils across)
    c.data.cache_dir = str(tmp_path / "cache")
    c.model.vocab_size = 400
    c.data.tokenizer.kind, c.data.tokenizer.vocab_size, c.data.tokenizer.max_train_lines = "sentencepiece", 400, 3000
    workdir = tmp_path / "run"
    with pytest.raises(UserError, match=r"config.salt.teacher: the teacher was trained with tokenizer "
                                        r"sp-0123456789abcdef, the student uses sp-[0-9a-f]{16}; set "
                                        r"config.data.tokenizer.kind=sentencepiece and "
                                        r"model_file=/teacher/tokenizer/tokenizer.model"):
        loop.run(c, str(workdir))
    assert not workdir.exists()
    assert os.listdir(tmp_path / "cache") == ["tokenizers"]  # the tokenizer was trained; no store was built

    c.data.tokenizer.vocab_size = 380  # another size: refused from the configs, nothing trained
    with pytest.raises(UserError, match=r"\(400 ids\), the student would train a SentencePiece tokenizer of 380"):
        loop.run(c, str(workdir))
    assert len(os.listdir(tmp_path / "cache" / "tokenizers")) == 1 and not workdir.exists()
