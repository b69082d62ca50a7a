"""Every hint of the error catalogue (docs/errors.md), followed, gets past its error.

tests/test_errors.py checks that each row's mistake ends in its one line. Here each row's "what to do" is
done (FIXES: the row's arguments as the hint changes them, and its setup undone where the hint says so)
and the run is set up again in this process (salt_jax.train.setup, where every check that can refuse a run
happens; the `diverged` row trains, since its error comes from training): the row's message must be gone,
and the run must get through, so a hint that points the wrong way, or leads to another refusal, fails.
The `hf` and `eval` rows' hints are followed through those commands' own checks.
"""

import os
import shutil

import pytest
from absl import flags
from ml_collections import config_flags

from conftest import REPO
from test_errors import DATA_SETUPS, ROWS, TINY

# row id -> the arguments that follow its hint ({teacher}: a trained teacher; DATA: the row's data directory;
# WORKDIR: the run's workdir). The rows whose hint is about the workdir or checkpoint also undo their setup
# (see _undo).
FIXES = {
    "kv-heads": ["--config.model.n_kv_heads=2"],  # a divisor of n_heads=4
    "seq-len": ["--config.data.seq_len=64"],  # below max_len=128
    "schedule": ["--config.optim.schedule=linear"],
    "nan-policy": ["--config.train.nan_policy=skip"],
    "cache-rank": ["--config.salt.method=salt", "--config.salt.teacher={teacher}", "--config.salt.token_select=none",
                   "--config.salt.teacher_logits=online"],
    "ds-reference": ["--config.salt.method=salt_ds", "--config.salt.teacher={teacher}",
                     "--config.salt.ds_rule=difference", "--config.salt.ds_reference={reference}"],
    "loss": ["--config.train.loss=chunked"],
    "attention": ["--config.model.attention=xla"],
    "unknown-field": ["--config.model.n_layers=2"],  # the field, checked against the config file
    "typo": ["--config.train.steps=3"],
    "bad-type": ["--config.data.batch_size=16"],
    "no-config": ["--config=configs/test_tiny.py"],
    "no-workdir": [],  # (the base arguments carry --workdir)
    "batch": ["--config.data.batch_size=16"],  # a multiple of data*fsdp=8
    "mesh": ["--config.mesh.data=-1"],
    "distributed": [],  # all three or none: none
    "data-path": ["--config.data.source=text", f"--config.data.path={REPO}/salt_jax/*.py"],
    "mixture-spec": [f"--config.data.mixture=web:1={REPO}/salt_jax/*.py"],
    "mixture-weight": [f"--config.data.mixture=web:1={REPO}/salt_jax/*.py"],
    "mixture-path": [f"--config.data.mixture=web:1={REPO}/salt_jax/*.py"],
    "zst-truncated": ["--config.data.source=text", "--config.data.path=DATA/*.jsonl.zst"],  # b.jsonl.zst removed
    "parquet-column": ["--config.data.source=text", "--config.data.path=DATA", "--config.data.text_field=body"],
    "hf-dataset": ["--config.data.source=hf", "--config.data.hf_dataset=DATA/saved"],  # a save_to_disk directory
    "no-teacher": ["--config.salt.method=salt", "--config.salt.teacher={teacher}"],
    "teacher-dir": ["--config.salt.method=salt", "--config.salt.teacher={teacher}"],
    "teacher-untrained": ["--config.salt.method=salt", "--config.salt.teacher={teacher}"],
    "teacher-vocab": ["--config.salt.method=salt", "--config.salt.teacher={teacher}"],  # the teacher's vocabulary
    "corrupt": [],  # the damaged checkpoint removed: a fresh start in the same workdir
    "model-changed": [],  # resumed with the original model
    "config-drift": [],  # resumed with the run's config
    "workdir-file": [],  # WORKDIR is made a directory
    "workdir-entry": [],  # metrics.jsonl (a directory) moved away
    "workdir-locked": [],  # the other run has ended
    "teacher-inside": ["--config.salt.method=salt", "--config.salt.teacher={teacher}"],
    "wandb-mode": ["--config.logging.wandb_mode=offline"],
    "diverged": ["--config.train.debug_nan_steps=3", "--config.train.nan_policy=skip"],
    "config-kind": ["--config=configs/test_tiny.py"],
    "fewshot-include": ["--config.eval.tasks=stdlib_next_line", f"--config.eval.include_path={REPO}/salt_jax/eval/tasks"],
    "gcs-unreachable": [],  # "or use a local path": the base arguments' local --workdir
    "teacher-tokenizer": ["--config.salt.method=salt", "--config.salt.teacher={teacher}",
                          "--config.salt.teacher_tokenizer=same",
                          "--config.data.tokenizer.kind=bytes"],  # the teacher's tokenizer settings
    "cross-kd-loss": ["--config.salt.method=salt", "--config.salt.teacher={teacher}",
                      "--config.data.tokenizer.kind=sentencepiece", "--config.data.tokenizer.vocab_size=384",
                      "--config.model.vocab_size=384", "--config.salt.kd_loss=forward_kl"],
    "tokenizer-vocab": ["--config.data.tokenizer.kind=sentencepiece", "--config.data.tokenizer.vocab_size=400",
                        "--config.model.vocab_size=400"],
    "config-arg": ["--config=configs/test_tiny.py:salt", "--config.salt.teacher={teacher}"],
}
OTHER_COMMANDS = {"hf", "eval"}  # followed through those commands' checks (test_hf_and_eval_hints)


def test_every_row_has_its_fix():
    ids = {r["id"] for r in ROWS if r["area"] not in OTHER_COMMANDS}
    assert ids == set(FIXES), (sorted(ids - set(FIXES)), sorted(set(FIXES) - ids))


def _config(argv: list[str]):
    """The run config as `python -m salt_jax.main` builds it from argv (its --config file and overrides)."""
    from salt_jax import cli

    argv = [a for a in argv if a.startswith("--config")]
    last = max(i for i, a in enumerate(argv) if a.startswith("--config="))  # (the command line's last --config wins)
    argv = [argv[last]] + [a for a in argv if not a.startswith("--config=")]
    cli.check_config_file(["prog", *argv], "salt-train")
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=["prog", *argv], lock_config=True)
    values(["prog", *argv])
    return values.config


def _undo(row_id: str, workdir: str, finished: str) -> None:
    """The setup of the rows whose hint is about the workdir, done the hint's way."""
    if row_id in ("corrupt", "model-changed", "config-drift"):
        shutil.copytree(finished, workdir)
        if row_id == "corrupt":  # "remove it": the damaged checkpoint goes; the run starts again
            shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))


def _data(row_id: str, data) -> None:
    os.makedirs(data)
    if row_id in DATA_SETUPS:
        DATA_SETUPS[row_id](data)
    if row_id == "parquet-column":  # (the row's ten short rows are too little text for a held-out split)
        import pyarrow as pa
        import pyarrow.parquet as pq

        texts = [f"document {i}: " + "some text to train on. " * 40 for i in range(300)]
        pq.write_table(pa.table({"body": texts, "id": list(range(len(texts)))}), str(data / "a.parquet"))
    if row_id == "zst-truncated":  # "re-download the file or remove it"
        os.remove(data / "b.jsonl.zst")
    if row_id == "hf-dataset":
        import datasets

        datasets.Dataset.from_dict({"text": [f"line {i} of a small corpus\n" * 20 for i in range(200)]}).save_to_disk(
            str(data / "saved"))


@pytest.mark.parametrize("row", [r for r in ROWS if r["area"] not in OTHER_COMMANDS], ids=lambda r: r["id"])
def test_following_the_hint_gets_past_the_error(row, tmp_path, cache_dir, request):
    from salt_jax.errors import UserError
    from salt_jax.train import loop, setup as setup_lib

    workdir, data = str(tmp_path / "run"), tmp_path / "data"
    _undo(row["id"], workdir, request.getfixturevalue("finished_run") if row["id"] in (
        "corrupt", "model-changed", "config-drift") else "")
    args = " ".join(FIXES[row["id"]])
    if "{teacher}" in args:
        args = args.replace("{teacher}", request.getfixturevalue("teacher_dir"))
    if "{reference}" in args:  # a checkpoint smaller than the teacher: a 1-layer teacher-sized model
        args = args.replace("{reference}", request.getfixturevalue("salt_reference"))
    if "DATA" in args or row["id"] in DATA_SETUPS:
        _data(row["id"], data)
        args = args.replace("DATA", str(data))
    config = _config(TINY + args.split())
    try:
        if row["id"] == "diverged":  # (its error comes from a step: train through it)
            summary = loop.run(config, workdir)
            assert summary["final_eval_loss"] > 0
        else:
            run = setup_lib.setup(config, workdir)
            if run.teacher is not None:
                run.teacher.release()
    except UserError as e:
        pytest.fail(f"{row['id']}: following the hint ({' '.join(FIXES[row['id']])}) still fails: {e}")


def test_hf_and_eval_hints(tmp_path, request, cache_dir):
    """hf: a local Hugging Face directory imports, and a finished run's workdir exports; eval: the suggested task
    name, an existing step and an include path holding task YAMLs are accepted by eval's own checks."""
    rows = {r["id"] for r in ROWS if r["area"] in OTHER_COMMANDS}
    assert rows == {"hf-dir", "hf-export", "eval-task", "eval-hub", "eval-workdir", "eval-step", "eval-include",
                    "eval-include-empty"}, rows
    pytest.importorskip("safetensors")
    from salt_jax.eval import harness
    from salt_jax.eval import load as eval_load
    from salt_jax.hf import convert

    finished = request.getfixturevalue("finished_run")
    out = str(tmp_path / "hf")
    convert.export_hf(finished, out)  # hf-export: a finished run's workdir
    assert os.path.isfile(os.path.join(out, "config.json"))
    convert.import_hf(out, str(tmp_path / "imported"))  # hf-dir: a local Hugging Face model directory
    assert os.path.isdir(tmp_path / "imported" / "checkpoints")
    # eval-task, eval-hub: the suggested task, an offline one
    harness.check_tasks(["stdlib_next_line"], harness.task_manager(None, ["stdlib_next_line"]))
    harness.check_include_path(os.path.join(REPO, "salt_jax", "eval", "tasks"))  # eval-include(-empty): task YAMLs
    loaded = eval_load.load(finished, 6)  # eval-workdir / eval-step: the run's workdir, a step it saved
    assert loaded is not None
