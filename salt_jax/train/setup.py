"""Everything a training run needs before its first step, built once: `setup(config, workdir) -> Run`.

Order matters and is the order below: validate the config and check
everything that can refuse the run from the config and the files it names
(the workdir, the mesh, the teacher: found, its vocabulary and tokenizer
against the student's), build (or open) the token store, restore the latest
checkpoint or create the state, load the teacher only when the KD phase has
steps left, compile the steps, and, for SALT_DS, select the KD phase's
sequences.

Tokenizer checks before building: the student's tokenizer is described from
its config without training anything (bytes, a Hugging Face tokenizer.json or
a given SentencePiece model_file: its fingerprint; a SentencePiece model still
to be trained: only its kind and size), and refused at once where it differs
from the teacher's record (fingerprint, number of ids, model vocab_size). A
SentencePiece model to be trained that matches the teacher's in kind and size
is trained first and its fingerprint checked before the store is built.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
from typing import Any

import jax
import ml_collections
import numpy as np

from salt_jax import paths
from salt_jax.config import check_vocab, resolved, validate
from salt_jax.data import alignment
from salt_jax.data import batches as batches_lib
from salt_jax.data import sources
from salt_jax.data import store as store_lib
from salt_jax.data import tokenizer as tokenizer_lib
from salt_jax.errors import UserError
from salt_jax.hf.source import TeacherSource
from salt_jax.hf.source import resolve as resolve_teacher
from salt_jax.kd import methods, objective, selection
from salt_jax.kd import teacher as teacher_lib
from salt_jax.kd import teacher_cache
from salt_jax.kd.schedules import KDPhase
from salt_jax.model import checkpoints, sharding
from salt_jax.model.flops import RunFlops, param_count
from salt_jax.model.transformer import Transformer
from salt_jax.train import faults, metrics, optim
from salt_jax.train import fewshot as fewshot_lib
from salt_jax.train import state as state_lib
from salt_jax.train import workdir as workdir_lib
from salt_jax.train.step import StepPrograms, Guard


@dataclasses.dataclass
class Run:
    """One run's moving parts. The loop reads and replaces `state` and `teacher`; the rest is fixed."""

    config: ml_collections.ConfigDict
    workdir: str
    store: store_lib.Store  # a TokenStore, or with config.data.mixture a salt_jax.data.mixture.MixtureStore
    state: Any  # salt_jax.train.state.TrainState, on the mesh
    start: int  # the first step this process runs (the restored checkpoint's step)
    previous: dict  # the restored checkpoint's record ({} on a fresh start)
    phase: KDPhase  # the KD phase: schedules and the step it ends at
    teacher: teacher_lib.Teacher | None  # held while the KD phase has steps left
    programs: StepPrograms  # the compiled train (with and without the teacher) and eval steps
    batches: batches_lib.Batches  # the training batches of step s
    kd_batches: batches_lib.Batches  # the KD phase's (SALT_DS: the teacher-selected sequences)
    eval_sets: dict[str, list[np.ndarray]]  # held-out batches per corpus ({"": ...} without a mixture)
    ckpt: checkpoints.Checkpointer
    writer: metrics.MetricsWriter
    record: dict  # saved beside every checkpoint
    flops: RunFlops
    n_params: int
    prefetch: batches_lib.Prefetcher | None = None  # set by start_prefetch
    fewshot: Any = None  # salt_jax.train.fewshot.FewShot when config.eval.tasks is set
    device_ahead: bool = True  # the read-ahead thread also puts each batch on the mesh (False: rows only, the
    # copy made when the step runs; salt_jax.bench --loop times both)

    @property
    def total_steps(self) -> int:
        return self.config.train.steps

    @property
    def mixture(self) -> dict[str, float] | None:
        """{corpus name: weight} of a mixture (config.data.mixture), None for one corpus."""
        return self.store.mixture()

    @property
    def corpus(self) -> dict:
        """What determines the data: the source's fingerprint (its files' paths and sizes, or the dataset),
        the token store and its counts, and for the built-in corpus the Python whose library it is; for a
        mixture, {"mixture": [that, with each corpus's name and weight]}."""
        if self.mixture is not None:
            return {"mixture": [dict(_corpus(c), name=n, weight=self.mixture[n]) for n, c in
                                self.store.components().items()]}
        return _corpus(self.store)

    def source(self, step: int) -> batches_lib.Batches:
        """The batches step `step` reads: the KD phase's while it lasts, else the training split's."""
        return self.kd_batches if self.phase.active(step) else self.batches

    def start_prefetch(self, start: int | None = None) -> None:
        """Reads the coming steps' rows ahead in a thread (config.data.prefetch steps; 0 = off), from step `start`
        (default: self.start), and (device_ahead) issues their copies onto the mesh from that thread."""
        if self.config.data.prefetch > 0:
            place = self._place if self.device_ahead else None
            self.prefetch = batches_lib.Prefetcher(self.source, self.start if start is None else start,
                                                   self.total_steps, self.config.data.prefetch, place)

    def _place(self, step: int, source: batches_lib.Batches, rows) -> jax.Array:
        return source.device(step, self.programs.batch_sharding, rows)

    def stop_prefetch(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()
            self.prefetch = None

    def batch(self, step: int) -> jax.Array:
        """The global batch of `step` on the mesh (this host's rows)."""
        source = self.source(step)  # (the teacher is held exactly while the phase is active)
        if self.prefetch is None:
            return source.device(step, self.programs.batch_sharding)
        got = self.prefetch.take(step, source)  # (on the mesh already when device_ahead)
        return got if self.device_ahead else self._place(step, source, got)

    def teacher_input(self, step: int):
        """The KD step's teacher argument at `step`: the teacher's parameters, or the batch's cached targets."""
        return None if self.teacher is None else self.teacher.inputs(step)

    def end_kd_phase(self, step: int) -> None:
        """From `step` on, train with the teacher-free step and free the teacher's memory."""
        self.programs.drop_teacher()
        self.teacher.release()
        self.teacher = None
        logging.info("KD phase over at step %d (%s): teacher released, training continues without it", step,
                     self.phase.why_ended())

    def heldout_loss(self) -> dict:
        """Mean held-out next-token loss (nats/token) and accuracy over the fixed eval set; for a mixture, per
        corpus too (metrics.eval_line)."""
        shape = (self.config.data.batch_size, self.config.data.seq_len + 1)
        totals = {}
        for name, eval_set in self.eval_sets.items():
            sums = jax.device_get([self.programs.eval(self.state.params, jax.make_array_from_process_local_data(
                self.programs.batch_sharding, b, shape)) for b in eval_set])
            totals[name] = {k: float(np.sum([s[k] for s in sums])) for k in sums[0]}
        return metrics.eval_line(totals, self.mixture)


def _corpus(store: store_lib.TokenStore) -> dict:
    m = store.meta
    out = {"source": m["source"], "source_fingerprint": m["source_fingerprint"], "tokenizer": m["tokenizer"],
           "store": store.directory.rstrip("/").rsplit("/", 1)[-1],
           "train_files": m["splits"]["train"]["files"], "train_tokens": m["splits"]["train"]["tokens"],
           "heldout_tokens": m["splits"]["heldout"]["tokens"]}
    if m["source"] == "stdlib":
        out["python"] = platform.python_version()
    return out


def _check_same_model(config, ckpt: checkpoints.Checkpointer):
    def same_model(record: dict) -> None:
        if record.get("model") and record["model"] != config.model.to_dict():
            changed = sorted(k for k in record["model"] if record["model"][k] != config.model.to_dict().get(k))
            raise UserError(f"config.model.{changed[0] if changed else 'preset'}: differs from the model of the "
                            f"checkpoints in {ckpt.directory}; use the run's original model config or a fresh "
                            "--workdir")
    return same_model


def _check_teacher_outside(teacher: str, workdir: str) -> None:
    """A teacher inside the student's own workdir would be deleted by keep_checkpoints."""
    if not teacher or paths.is_remote(teacher) or paths.is_remote(workdir):
        return
    t, w = os.path.realpath(paths.expand(teacher)), os.path.realpath(paths.expand(workdir))
    if t == w or t.startswith(w + os.sep):
        raise UserError(f"config.salt.teacher={teacher}: is inside this run's own --workdir={workdir}, whose "
                        "checkpoints the run rotates; point at the teacher run's own workdir")


def _resuming(workdir: str) -> bool:
    ckpts = paths.join(workdir, "checkpoints")
    return paths.isdir(ckpts) and any(d.isdigit() for d in paths.listdir(ckpts))


def _check_teachers(config: ml_collections.ConfigDict, workdir: str,
                    student: tuple[str | None, int]) -> list[tuple[TeacherSource, bool]]:
    """A fresh run that will load its teacher (and SALT_DS's reference model) says a missing or untrained one, and
    one whose vocabulary or tokenizer differs from the student's, before minutes of tokenizer training and store
    building (a resumed one may be past its KD phase, and need no teacher). Returns each one resolved (the
    TeacherSource the run then loads) and whether its tokenizer check waits for the student's SentencePiece model
    to be trained (kd.teacher.check_tokenizer)."""
    salt = config.salt
    if salt.kd_steps == 0 or _resuming(workdir):
        return []
    fields = ["teacher"]
    if methods.method(salt.method).selects_data and salt.ds_rule == "difference":
        fields.append("ds_reference")
    checked = []
    for name in fields:
        source = resolve_teacher(salt[name], f"config.salt.{name}")
        if name == "teacher" and salt.teacher_tokenizer == teacher_lib.CROSS:
            checked.append((source, False))  # (its own tokenizer: read when the run aligns its batches)
            continue
        checked.append((source, teacher_lib.check_tokenizer(source, config.model.vocab_size, student)))
    return checked


def _check_before_building(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[TeacherSource, bool]]:
    """Everything checkable from the (resolved) config, the workdir and the teacher's files, before minutes of
    tokenizer training and store building; returns the teachers checked (_check_teachers): what the run loads, and
    the tokenizer checks that wait for the student's tokenizer to be trained (_check_trained_tokenizer)."""
    workdir_lib.check_config(config, workdir)
    student = tokenizer_lib.described(config.data.tokenizer)
    check_vocab(config, student[1])
    if methods.method(config.salt.method).teacher:  # (a run without a teacher ignores salt.teacher)
        _check_teacher_outside(config.salt.teacher, workdir)
        return _check_teachers(config, workdir, student)
    return []


def _check_trained_tokenizer(config: ml_collections.ConfigDict, checked: list[tuple[TeacherSource, bool]]) -> None:
    """The checks that waited for the student's SentencePiece model: it is trained (and cached, where the store
    build finds it) and its fingerprint checked before the store is built."""
    waiting = [source for source, waits in checked if waits]
    if not waiting:
        return
    cfg_d = config.data
    cache_dir = paths.expand(cfg_d.cache_dir or store_lib.default_cache_dir())
    if cfg_d.get("mixture"):  # (its tokenizer trains on every corpus's lines: checked once the store is open)
        return
    train = not store_lib.is_shared(cfg_d, cache_dir) or jax.process_index() == 0
    tok = tokenizer_lib.make_tokenizer(cfg_d.tokenizer, sources.make_source(cfg_d), cache_dir, train=train)
    for source in waiting:
        teacher_lib.check_tokenizer(source, config.model.vocab_size, (tok.fingerprint(), tok.vocab_size))


def _restore_or_create(config, workdir: str, model, tx, mesh):
    """(checkpointer, first step, state on the mesh, its shardings, the restored record or {})."""
    cfg_t, seq_len = config.train, config.data.seq_len
    abstract, shardings = state_lib.abstract_state(model, tx, seq_len, mesh)
    ckpt = checkpoints.Checkpointer(paths.join(workdir, "checkpoints"), cfg_t.checkpoint_every,
                                    cfg_t.keep_checkpoints)
    start, state, previous = ckpt.restore_latest(abstract, shardings, _check_same_model(config, ckpt))
    if start is None:
        return ckpt, 0, state_lib.create_state(model, tx, seq_len, mesh, config.seed), shardings, {}
    logging.info("resuming %s from step %d", workdir, start)
    return ckpt, start, state, shardings, previous


def _teacher_for(config, store, tok, mesh, previous: dict, phase: KDPhase, start: int, workdir: str,
                 source: TeacherSource | None, aligner: alignment.Aligner | None = None):
    """The teacher while the KD phase has steps left (from `start`): online, or its cached logits; else None.
    `source`: config.salt.teacher as checked (None: not checked, a resumed run; resolved now); `aligner`: a
    teacher with another tokenizer's (its cache holds chunk log-likelihoods)."""
    if not phase.active(start):
        return None
    if config.salt.teacher_logits == "cache":
        kill = faults.KillHooks(config.train.debug_kill)
        return teacher_cache.cached_teacher(config, store, tok, mesh, previous, phase.scheduled_end, workdir,
                                            written=lambda step: kill.maybe_kill("cache", step), source=source,
                                            aligner=aligner)
    return teacher_lib.load_for_run(config, tok, mesh, previous, source)


def _aligner(config, batches, tok, source: TeacherSource | None) -> alignment.Aligner:
    """The alignment of the student's batches with a teacher with another tokenizer
    (config.salt.teacher_tokenizer=cross), its tokens per window config.salt.teacher_seq_len or measured from
    both tokenizers' bytes per token on the first training rows (the same on every host and every resume),
    at most the teacher's max_len, and said when longer than the windows a salt_jax teacher trained on."""
    source = source or resolve_teacher(config.salt.teacher)
    cache_dir = paths.expand(config.data.cache_dir or store_lib.default_cache_dir())
    aligner = alignment.Aligner.of(tok, teacher_lib.teacher_tokenizer(source, [cache_dir]),
                                   config.salt.teacher_seq_len)
    max_len = int(teacher_lib.model_config(source).max_len)
    if aligner.teacher_len > max_len:
        raise UserError(f"config.salt.teacher_seq_len={aligner.teacher_len}: exceeds the teacher's max_len "
                        f"({max_len}); set it to at most {max_len}")
    rows = alignment.first_rows(batches, 64)  # (read once: the teacher's length and the encodability check)
    if not aligner.teacher_len:
        student_bpt, teacher_bpt = aligner.bytes_per_token(rows)
        measured = alignment.teacher_len(config.data.seq_len, student_bpt, teacher_bpt)
        aligner.teacher_len = min(measured, max_len)
        logging.info("teacher sequence: %d tokens per window of %d (bytes per token: student %.2f, teacher %.2f, "
                     "on 64 training rows; x1.25, to a multiple of 16%s: config.salt.teacher_seq_len=0); chunks "
                     "past it are counted in metrics.jsonl's truncated_chunks", aligner.teacher_len,
                     config.data.seq_len, student_bpt, teacher_bpt,
                     f"; {measured} capped at the teacher's max_len" if measured > max_len else "")
    _check_encodable(aligner, rows)
    trained = _teacher_seq_len(source)
    if trained and aligner.teacher_len > trained:
        logging.warning("teacher sequence: %d tokens per window, but the teacher was trained on windows of %d: it "
                        "reads positions it never trained on; set config.salt.teacher_seq_len=%d (chunks past it "
                        "are counted) or train the teacher on longer windows", aligner.teacher_len, trained, trained)
    return aligner


UNENCODABLE_WARN, UNENCODABLE_REFUSE = 0.05, 0.5  # shares of document pieces the teacher cannot reproduce


def _check_encodable(aligner: alignment.Aligner, rows) -> None:
    """A teacher tokenizer that cannot reproduce the student's text (one that normalises it, or maps characters to
    <unk>) leaves those pieces without chunks: said above 5% of the first rows' pieces, refused above half."""
    pieces = sum(len(aligner.pieces(row)) for row in rows)
    bad = int(aligner.align(rows).stats[:, alignment.UNENCODABLE].sum())
    share = bad / max(pieces, 1)
    what = (f"the teacher's tokenizer ({aligner.teacher_fingerprint}) does not reproduce the text of {bad} of "
            f"{pieces} document pieces of the first 64 training rows ({share:.0%})")
    if share > UNENCODABLE_REFUSE:
        raise UserError(f"config.salt.teacher: {what}: it normalises text or maps characters to unknown ids, so "
                        "most of the KD phase would have nothing to align; use a teacher whose tokenizer keeps "
                        "bytes as they are")
    if share > UNENCODABLE_WARN:
        logging.warning("%s: those pieces have no chunks (counted in metrics.jsonl's unencodable_pieces)", what)


def _teacher_seq_len(source: TeacherSource) -> int:
    """The window length a salt_jax teacher was trained on (its run's config.json), 0 when unknown."""
    path = paths.join(source.run_dir, "config.json")
    try:
        return int(((paths.read_json(path).get("data") or {}).get("seq_len")) or 0) if paths.exists(path) else 0
    except (OSError, ValueError, TypeError):
        return 0


def setup(user_config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Builds (or restores) everything the loop of the run in `workdir` needs.

    The user's config is validated and resolved once (salt_jax.config.resolved: a new value, which config.json
    records and Run.config carries); everything after reads that value, and `user_config` is left as it is.
    """
    validate(user_config)
    config = resolved(user_config)
    checked = _check_before_building(config, workdir)
    sources = {source.field: source for source, _ in checked}  # (each teacher resolved once: checked, then loaded)
    cfg_d, cfg_t = config.data, config.train
    mesh = sharding.make_mesh(config.mesh)  # (mesh, batch and task names: checked before the store is built)
    sharding.check_batch(cfg_d.batch_size, mesh)
    fewshot_lib.check_tasks(config)
    _check_trained_tokenizer(config, checked)
    store, tok = store_lib.build_store(cfg_d)
    check_vocab(config, tok.vocab_size)
    fewshot = fewshot_lib.maybe(config, mesh, tok, paths.join(workdir, "lm_eval.log"), store)

    model = Transformer(config.model)
    tx, lr_schedule = optim.make_optimizer(config.optim, cfg_t.steps)
    ckpt, start, state, shardings, previous = _restore_or_create(config, workdir, model, tx, mesh)
    phase = KDPhase.from_config(config.salt, cfg_t.steps, cfg_d.batch_size,
                                switch_step=int(jax.device_get(state.kd["switch_step"])), lr=lr_schedule)
    batches = batches_lib.training_batches(store, cfg_d.batch_size, cfg_d.seed)
    cross = (phase.active(start) and phase.method.teacher
             and config.salt.teacher_tokenizer == teacher_lib.CROSS)  # (the KD phase aligns its batches)
    aligner = _aligner(config, batches, tok, sources.get("config.salt.teacher")) if cross else None
    teacher = _teacher_for(config, store, tok, mesh, previous, phase, start, workdir,
                           sources.get("config.salt.teacher"), aligner)
    if jax.process_index() == 0:
        workdir_lib.write_config(config, workdir)
        tokenizer_lib.keep(tok, workdir)  # (sampling, evaluation and export read this copy)
    n_params = param_count(config.model)
    logging.info("model %s: %s parameters; mesh %s; %d devices", config.model.preset, f"{n_params:,}",
                 dict(mesh.shape), mesh.size)
    guard = Guard(skip_nonfinite=cfg_t.nan_policy == "skip",
                  nan_steps=faults.parse_steps(cfg_t.debug_nan_steps, "config.train.debug_nan_steps"))
    programs = StepPrograms(model, tx, lr_schedule, tok.pad_id, mesh, shardings, objective.make_loss(config, tok.pad_id),
                            guard, teacher=teacher, phase=phase)
    record = {"data_seed": cfg_d.seed, "method": config.salt.method, "model": config.model.to_dict(),
              "tokenizer": tok.fingerprint(), "vocab_size": tok.vocab_size,
              "teacher": teacher.identity() if teacher is not None else previous.get("teacher")}
    kd_batches = (selection.kd_batches(config, store, teacher, mesh, tok, phase, workdir,
                                       sources.get("config.salt.ds_reference"), aligner)
                  if phase.method.selects_data and teacher is not None else batches)
    if teacher is not None and aligner is not None:
        kd_batches = alignment.AlignedBatches(kd_batches, aligner)
        record["teacher_seq_len"] = aligner.teacher_len
    return Run(config=config, workdir=workdir, store=store, state=state, start=start, previous=previous, phase=phase,
               teacher=teacher, programs=programs, batches=batches, kd_batches=kd_batches,
               eval_sets=batches_lib.eval_sets(store, cfg_d.batch_size, cfg_d.heldout_batches, tok.pad_id),
               ckpt=ckpt, writer=metrics.MetricsWriter(workdir, resume_step=start, config=config), record=record,
               flops=RunFlops.of(config.model, cfg_d.seq_len, teacher.config if teacher else None, mesh.size,
                                 cfg_t.peak_tflops, aligner.teacher_len if aligner else 0),
               n_params=n_params, fewshot=fewshot)
