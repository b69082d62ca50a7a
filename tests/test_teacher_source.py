"""Where a teacher comes from, decided once (salt_jax.hf.source.resolve): each kind of path resolves to the right
kind, path, checkpoint root and step; and a teacher given as ~/... is checked and loaded from the one place."""

import os

import pytest

from salt_jax.errors import UserError
from salt_jax.hf import source as source_lib
from salt_jax.hf.source import TeacherSource, resolve


def _hf_dir(path) -> str:
    """A directory that looks like a Hugging Face model directory (config.json + *.safetensors)."""
    os.makedirs(path)
    open(os.path.join(path, "config.json"), "w").write("{}")
    open(os.path.join(path, "model.safetensors"), "wb").close()
    return str(path)


def _run_dir(path, steps=(3, 7)) -> str:
    """A run workdir with finished checkpoints at `steps` (and an unfinished one after them)."""
    for step in steps:
        os.makedirs(os.path.join(path, "checkpoints", str(step)))
        open(os.path.join(path, "checkpoints", str(step), "_CHECKPOINT_METADATA"), "w").close()
    os.makedirs(os.path.join(path, "checkpoints", "9"))  # (still being written: no _CHECKPOINT_METADATA)
    return str(path)


def test_a_hugging_face_directory(tmp_path):
    hf = _hf_dir(tmp_path / "hf")
    assert resolve(hf) == TeacherSource("hf", hf)
    assert resolve(hf).directory == resolve(hf).run_dir == hf


def test_a_run_workdir_its_checkpoints_and_one_checkpoint(tmp_path):
    run = _run_dir(tmp_path / "run")
    ckpts = os.path.join(run, "checkpoints")
    assert resolve(run) == TeacherSource("checkpoint", run, ckpts, 7)
    assert resolve(ckpts) == TeacherSource("checkpoint", ckpts, ckpts, 7)
    one = resolve(os.path.join(ckpts, "3"))
    assert one == TeacherSource("checkpoint", os.path.join(ckpts, "3"), ckpts, 3)
    assert one.directory == os.path.join(ckpts, "3") and one.run_dir == run
    assert resolve(run + "/").root == ckpts  # (a trailing slash changes nothing)


def test_home_relative_and_absolute_paths_resolve_alike(tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    hf = _hf_dir(home / "models" / "hf")
    run = _run_dir(home / "models" / "run")
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert resolve("~/models/hf") == resolve(hf) == resolve("../home/models/hf") == TeacherSource("hf", hf)
    assert (resolve("~/models/run") == resolve(run) == resolve("../home/models/run")
            == TeacherSource("checkpoint", run, os.path.join(run, "checkpoints"), 7))
    monkeypatch.chdir(home)
    assert resolve("models/run/checkpoints/3").directory == os.path.join(run, "checkpoints", "3")


def test_a_uri_is_kept_as_given_and_never_looked_for_as_a_local_directory(tmp_path, monkeypatch):
    """gs://bucket/x: only the parse here (no network): the URI goes to the checkpoint lookup unchanged."""
    monkeypatch.chdir(tmp_path)
    asked = []

    def lookup(path, field):
        asked.append((path, field))
        return "gs://bucket/x/checkpoints", 5

    monkeypatch.setattr(source_lib.checkpoints, "resolve_checkpoint", lookup)
    monkeypatch.setattr(source_lib.hf_files, "is_hf_dir", lambda p: pytest.fail(f"looked for {p} locally"))
    src = resolve("gs://bucket/x", "config.salt.ds_reference")
    assert asked == [("gs://bucket/x", "config.salt.ds_reference")]
    assert src == TeacherSource("checkpoint", "gs://bucket/x", "gs://bucket/x/checkpoints", 5,
                                "config.salt.ds_reference")
    assert src.directory == "gs://bucket/x/checkpoints/5" and src.run_dir == "gs://bucket/x"
    assert not os.path.exists(tmp_path / "gs:")


def test_a_missing_or_untrained_teacher_names_its_field(tmp_path):
    with pytest.raises(UserError, match=r"config.teacher_path=.*nope: no such directory"):
        resolve(str(tmp_path / "nope"), "config.teacher_path")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"config.salt.ds_reference=.*empty: no finished checkpoint"):
        resolve(str(tmp_path / "empty"), "config.salt.ds_reference")


def test_a_teacher_given_as_home_path_is_checked_and_loaded_from_one_place(teacher_dir, tiny_config, tmp_path,
                                                                          monkeypatch):
    """salt.teacher=~/teacher: setup checks the teacher's tokenizer record and restores its parameters from the
    same TeacherSource, under the expanded home (stopped before anything is compiled)."""
    from salt_jax.config import set_method
    from salt_jax.kd import teacher as teacher_lib
    from salt_jax.model import checkpoints
    from salt_jax.train import setup as setup_lib

    home = tmp_path / "home"
    home.mkdir()
    os.symlink(teacher_dir, home / "teacher")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)  # (a path read as relative would land under here)
    seen = {"checked": [], "loaded": [], "restored": []}
    check, load, restore = teacher_lib.check_tokenizer, teacher_lib.load_teacher, checkpoints.restore_params
    monkeypatch.setattr(teacher_lib, "check_tokenizer", lambda s, *a: seen["checked"].append(s) or check(s, *a))
    monkeypatch.setattr(teacher_lib, "load_teacher",
                        lambda *a: seen["loaded"].append(a[4]) or load(*a))
    monkeypatch.setattr(checkpoints, "restore_params",
                        lambda root, step, *a: seen["restored"].append((root, step)) or restore(root, step, *a))

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(setup_lib, "StepPrograms", stop)
    c = tiny_config
    set_method(c, "salt")
    c.salt.teacher, c.salt.kd_steps = "~/teacher", 4
    with pytest.raises(Stop):
        setup_lib.setup(c, str(tmp_path / "student"))
    want = resolve(str(home / "teacher"))
    assert seen["checked"] == seen["loaded"] == [want]
    assert seen["checked"][0] is seen["loaded"][0]  # resolved once, then passed on
    assert seen["restored"] == [(str(home / "teacher" / "checkpoints"), want.step)]
