"""The frozen teacher: found from config.salt.teacher, restored once onto the mesh.

config.salt.teacher may also be a Hugging Face model directory, or a checkpoint
imported from one (read by `salt_jax.hf.convert`, straight into the sharded
layout); `adopt_teacher_vocabulary` then gives the student its tokenizer.

Whether the path names a Hugging Face directory or a checkpoint is decided once,
by salt_jax.hf.source.resolve; checking (`check_tokenizer`), identifying
(`recorded_tokenizer`, `identify`, `model_config`) and loading (`load_teacher`)
take the TeacherSource it returns. The teacher's model config and tokenizer come
from its checkpoint's record, so a student run names only the teacher's workdir
(or one checkpoint directory).
Only the parameters are restored (no optimizer state). A fingerprint of the
teacher checkpoint goes into the student's checkpoints so a resume with
another teacher is refused.

`Teacher` is what a KD step needs of any teacher (a Protocol): OnlineTeacher
here, the cached targets' CachedTeacher (salt_jax.kd.teacher_cache), and
FixedTeacher, one input for every step, for compiling and benchmarking.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from salt_jax import paths
from salt_jax.errors import UserError
from salt_jax.hf import files as hf_files
from salt_jax.hf.convert import load_params, teacher_hf_info
from salt_jax.hf.families import model_config_from_hf
from salt_jax.hf.source import HF, TeacherSource, resolve
from salt_jax.data.tokenizer import HFTokenizer, described, run_tokenizer
from salt_jax.kd import alm, methods, sparse
from salt_jax.model import checkpoints, presets, sharding
from salt_jax.model.flops import param_count
from salt_jax.model.transformer import Transformer, abstract_params


class Teacher(Protocol):
    """What a KD step needs of a teacher, whichever kind it is (salt_jax.train.step.StepPrograms takes one).

    `inputs(step)` is the KD step's teacher argument at `step`, laid out as
    `shardings`: the teacher's parameters for `model`'s forward inside the
    step, or, with `sparse_targets`, that batch's sparse teacher targets
    (salt_jax.kd.sparse.Targets; `model` is then None: no forward). Kinds:
    OnlineTeacher (a restored checkpoint), salt_jax.kd.teacher_cache.CachedTeacher
    (cached targets read from disk) and FixedTeacher (one input for every step:
    shapes to lower and compile, or the benchmark's random batch).
    """

    model: Transformer | None  # the teacher's network (None: its input is already its targets)
    shardings: Any  # the layout of `inputs(step)` on the mesh
    sparse_targets: bool  # inputs(step) is a sparse.Targets of the batch, not parameters
    aligned: bool  # another tokenizer than the student's: the KD step takes aligned batches and distils by ALM
    config: ml_collections.ConfigDict | None  # its model config, for FLOP counts (None: no teacher FLOPs)

    def inputs(self, step: int) -> Any:
        """The KD step's teacher argument at `step`."""

    def identity(self) -> dict:
        """{"checkpoint", "fingerprint"} (and more): saved with the student, a resume with another is refused."""

    def release(self) -> None:
        """Frees what it holds (device memory, readers) when the KD phase ends."""


@dataclasses.dataclass
class OnlineTeacher(Teacher):
    """A frozen teacher on the mesh: its model, parameters and their shardings, and where it came from.

    Its input to the KD step is `params` (run under stop_gradient); `release`
    frees them when the KD phase ends. `fingerprint` identifies the weights
    (a student refuses to resume with another teacher); `tokenizer` is the
    fingerprint of the tokenizer the teacher was trained with.
    """

    model: Transformer
    config: ml_collections.ConfigDict  # the teacher's model config
    params: Any  # on the mesh
    shardings: Any
    checkpoint: str  # the checkpoint directory it came from
    fingerprint: str
    tokenizer: str  # the fingerprint of the tokenizer it was trained with
    aligned: bool = False  # it tokenizes otherwise than the student (config.salt.teacher_tokenizer=cross)

    sparse_targets = False  # (the parameters: the step runs the teacher's forward)

    def identity(self) -> dict:
        return {"checkpoint": self.checkpoint, "fingerprint": self.fingerprint}

    def inputs(self, step: int):
        """What the KD step of `step` takes as its teacher argument: the parameters."""
        del step
        return self.params

    def release(self) -> None:
        """Frees the teacher's device memory (after the KD phase)."""
        for leaf in jax.tree.leaves(self.params):
            leaf.delete()
        self.params = None


@dataclasses.dataclass
class FixedTeacher(Teacher):
    """A Teacher whose input is the same at every step: ShapeDtypeStructs to lower and compile the KD step
    from shapes alone (salt_jax.aot), or one random batch's input to time it (salt_jax.bench)."""

    model: Transformer | None
    shardings: Any
    input: Any  # what inputs(step) returns
    sparse_targets: bool = False
    config: ml_collections.ConfigDict | None = None
    aligned: bool = False

    @classmethod
    def of_model(cls, model: Transformer, shardings, config=None) -> "FixedTeacher":
        """The online teacher `model` (laid out as `shardings`) with its parameters' shapes as input."""
        return cls(model, shardings, nn.meta.unbox(abstract_params(model)), False, config)

    @classmethod
    def of_targets(cls, targets: sparse.Targets) -> "FixedTeacher":
        """Cached sparse targets (arrays or ShapeDtypeStructs, each sharded like the batch) as input."""
        return cls(None, sparse.Targets(*(t.sharding for t in targets)), targets, True)

    def inputs(self, step: int):
        del step
        return self.input

    def identity(self) -> dict:
        return {"checkpoint": "", "fingerprint": ""}

    def release(self) -> None:
        self.input = None


def target_shapes(batch_size: int, seq_len: int, k: int, batch_sharding) -> sparse.Targets:
    """The shapes and dtypes of one batch's cached sparse targets as the KD step takes them (k ids per
    position, sharded like the batch)."""
    return sparse.Targets(*(jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding) for shape, dtype in (
        ((batch_size, seq_len, k), jnp.int32), ((batch_size, seq_len, k), jnp.float32),
        ((batch_size, seq_len), jnp.float32), ((batch_size, seq_len), jnp.float32))))


def read_record(root: str, step: int) -> dict:
    """The teacher checkpoint's record (model config, tokenizer), or a clear error."""
    record = checkpoints.read_record(root, step)
    if record is None:
        raise UserError(f"{paths.join(root, str(step))}: teacher checkpoint has no readable record "
                        "(model config); was it written by salt_jax?")
    return record


def checkpoint_fingerprint(ckpt_dir: str) -> str:
    """A short hash of a checkpoint's saved parameters, from its files.

    Hashes the record and every metadata / manifest file of the saved state
    (and the sizes of the data files), so it identifies the checkpoint's
    contents wherever it is copied, and does not depend on the mesh or the
    number of devices it is read onto.
    """
    h = hashlib.sha256()
    for path in sorted(paths.walk_files(ckpt_dir, hidden=True), key=lambda p: tuple(p.rsplit("/", 1))):
        rel = path[len(ckpt_dir.rstrip("/")) + 1:]
        name = rel.rsplit("/", 1)[-1]
        if name in ("commit_success.txt", "_CHECKPOINT_METADATA"):
            continue  # written at save time (timestamps), not content
        size = paths.getsize(path)
        h.update(f"{rel}:{size}\n".encode())
        if size <= 1 << 20:
            with paths.open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()[:16]


def held_config(cfg: ml_collections.ConfigDict, salt: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The teacher's model config as it is held: a frozen teacher needs no float32 master copy, so
    config.salt.teacher_dtype (e.g. bfloat16) sets its parameter and compute dtype."""
    if salt.teacher_dtype:
        cfg.param_dtype = cfg.dtype = salt.teacher_dtype
    return cfg


SIZE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim")


def check_preset(cfg: ml_collections.ConfigDict, preset: str, where: str) -> None:
    """config.salt.teacher_preset (what the run was compiled and sized for) must be the teacher's size."""
    if not preset:
        return
    want = presets.model_config(preset)
    differ = [f for f in SIZE_FIELDS if cfg[f] != want[f]]
    if differ:
        raise UserError(f"config.salt.teacher_preset={preset}: the teacher {where} has {differ[0]}="
                        f"{cfg[differ[0]]}, the preset {want[differ[0]]}; set teacher_preset to the teacher's "
                        "size (or '')")


def layout(cfg: ml_collections.ConfigDict, salt: ml_collections.ConfigDict, mesh) -> tuple[Transformer, Any]:
    """(teacher model, its parameters' shardings): config.salt.teacher_sharding's layout on the mesh."""
    model = Transformer(cfg)
    boxed = abstract_params(model)
    if salt.teacher_sharding == "replicated":
        return model, jax.tree.map(lambda _: NamedSharding(mesh, P()), nn.meta.unbox(boxed))
    return model, sharding.shardings_for(boxed, mesh)


def model_config(source: TeacherSource) -> ml_collections.ConfigDict:
    """The teacher's model config from its files (no parameters read): its checkpoint record's, or the one its
    Hugging Face config.json describes."""
    if source.kind == HF:
        return model_config_from_hf(hf_files.read_hf_config(source.path), os.path.join(source.path, "config.json"))
    record = read_record(source.root, source.step)
    if "model" not in record:
        raise UserError(f"{source.directory}: the checkpoint record has no model config; re-train the teacher with "
                        "this version of salt_jax")
    return ml_collections.ConfigDict(record["model"])


def recorded_tokenizer(source: TeacherSource) -> dict:
    """What a teacher says of its tokenizer and vocabulary, from its files alone (no parameters read):
    {"fingerprint" ("" when unknown), "tokenizer_vocab" (None when unknown), "vocab" (its model's vocab_size),
    "model_file" (a SentencePiece model its run kept, or ""), "hf_dir" (a Hugging Face model directory's
    path, or "")}."""
    if source.kind == HF:
        return {"fingerprint": hf_files.tokenizer_fingerprint(source.path), "tokenizer_vocab": None,
                "vocab": model_config(source).vocab_size, "model_file": "", "hf_dir": source.path}
    record = read_record(source.root, source.step)
    model_file = next((p for p in (paths.join(source.run_dir, "tokenizer", "tokenizer.model"),
                                   paths.join(source.run_dir, "tokenizer.model")) if paths.exists(p)), "")
    return {"fingerprint": record.get("tokenizer", ""), "tokenizer_vocab": record.get("vocab_size"),
            "vocab": (record.get("model") or {}).get("vocab_size"), "model_file": model_file, "hf_dir": ""}


def check_tokenizer(source: TeacherSource, model_vocab: int, student: tuple[str | None, int]) -> bool:
    """Refuses, before any tokenizer is trained or store built, a teacher (or `field`'s model) whose tokenizer
    or vocabulary differs from the student's; returns whether the student's tokenizer must still be made to
    know (a SentencePiece model to train, like the teacher's in kind and size).

    `source` is the teacher (its errors name source.field), `model_vocab` the student's config.model.vocab_size,
    `student` its
    tokenizer's (fingerprint or None when still to be trained, vocabulary size): data.tokenizer.described.
    The rule: the model vocabularies must be equal; a known student fingerprint must equal the teacher's
    recorded one; a SentencePiece model still to be trained is refused when the teacher's tokenizer is of
    another kind or size, and otherwise checked once trained (before the store is built).
    """
    info, field = recorded_tokenizer(source), source.field
    fp, tok_vocab = student
    if info["vocab"] is not None and info["vocab"] != model_vocab:
        raise UserError(f"{field}: the teacher's vocabulary ({info['vocab']}) differs from the student's "
                        f"config.model.vocab_size ({model_vocab}); teacher and student must share one tokenizer "
                        "and vocabulary")
    want = info["fingerprint"]
    if not want:
        return False
    if info["hf_dir"]:
        hint = f"set config.data.tokenizer.kind=hf and hf_dir={info['hf_dir']}"
    elif info["model_file"]:
        hint = f"set config.data.tokenizer.kind=sentencepiece and model_file={info['model_file']} (the teacher's)"
    else:
        hint = "use the teacher's config.data.tokenizer settings (same source and vocab_size, or its model_file)"
    hint += " (or distil across tokenizers: config.salt.teacher_tokenizer=cross)"
    if fp is not None and fp != want:
        raise UserError(f"{field}: the teacher was trained with tokenizer {want}, the student uses {fp}; {hint}")
    if fp is None and (not want.startswith("sp-") or info["tokenizer_vocab"] not in (None, tok_vocab)):
        had = f"{want} ({info['tokenizer_vocab']} ids)" if info["tokenizer_vocab"] else want
        raise UserError(f"{field}: the teacher was trained with tokenizer {had}, the student would train a "
                        f"SentencePiece tokenizer of {tok_vocab} ids; {hint}")
    return fp is None


def identify(source: TeacherSource) -> dict:
    """The teacher's identity ({"checkpoint", "fingerprint"}, as `OnlineTeacher.identity`) from its files, without
    restoring its parameters: what a run that only reads the teacher's cached logits needs of it."""
    if source.kind == HF:
        return {"checkpoint": source.path, "fingerprint": hf_files.fingerprint(source.path)}
    return {"checkpoint": source.directory, "fingerprint": checkpoint_fingerprint(source.directory)}


def load_teacher(salt: ml_collections.ConfigDict, student_model_cfg: ml_collections.ConfigDict,
                 tokenizer_fingerprint: str, mesh, source: TeacherSource | None = None) -> OnlineTeacher:
    """Reads the teacher's config, checks it against the student, restores its parameters.

    `source`: the teacher (default: config.salt.teacher resolved). Vocabulary checks happen before anything is
    compiled or restored.
    """
    source = source or resolve(salt.teacher)
    cross = salt.teacher_tokenizer == CROSS
    if source.kind == HF:
        return _load_hf_teacher(source, salt, student_model_cfg, tokenizer_fingerprint, mesh, cross)
    ckpt_dir, field = source.directory, source.field
    record = read_record(source.root, source.step)
    cfg = held_config(model_config(source), salt)
    check_preset(cfg, salt.teacher_preset, ckpt_dir)
    if cross:
        pass  # (its own tokenizer and vocabulary: nothing to compare)
    elif cfg.vocab_size != student_model_cfg.vocab_size:
        raise UserError(f"{field}: the teacher's vocabulary ({cfg.vocab_size}) differs from the "
                        f"student's config.model.vocab_size ({student_model_cfg.vocab_size}); teacher and "
                        "student must share one tokenizer and vocabulary")
    if not cross and record.get("tokenizer") and record["tokenizer"] != tokenizer_fingerprint:
        raise UserError(f"{field}: the teacher was trained with tokenizer {record['tokenizer']}, "
                        f"the student uses {tokenizer_fingerprint}; use the teacher's config.data.tokenizer "
                        "settings (same source and vocab_size, or its model_file), or distil across tokenizers "
                        "(config.salt.teacher_tokenizer=cross)")

    model, shardings = layout(cfg, salt, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(abstract_params(model)), shardings)
    params = checkpoints.restore_params(source.root, source.step, target, "teacher checkpoint")
    return OnlineTeacher(model=model, config=cfg, params=params, shardings=shardings, checkpoint=ckpt_dir,
                         fingerprint=checkpoint_fingerprint(ckpt_dir), tokenizer=record.get("tokenizer", ""),
                         aligned=cross)


def _load_hf_teacher(source: TeacherSource, salt, student_model_cfg, tokenizer_fp: str, mesh,
                     cross: bool = False) -> OnlineTeacher:
    """An OnlineTeacher read straight from a Hugging Face directory (config.salt.teacher=DIR) into its layout."""
    hf_dir, field = source.path, source.field
    cfg = held_config(model_config(source), salt)
    tok_fp = hf_files.tokenizer_fingerprint(hf_dir)
    if cross:
        pass  # (its own tokenizer and vocabulary: nothing to compare)
    elif cfg.vocab_size != student_model_cfg.vocab_size:
        raise UserError(f"{field}={hf_dir}: its vocab_size ({cfg.vocab_size}) differs from "
                        f"config.model.vocab_size ({student_model_cfg.vocab_size}); leave the student's at the "
                        "preset's value (it then takes the teacher's) or set it to the teacher's")
    if not cross and tok_fp and tok_fp != tokenizer_fp:
        raise UserError(f"{field}={hf_dir}: the run tokenizes with {tokenizer_fp}, not the teacher's "
                        f"tokenizer ({tok_fp}); set config.data.tokenizer.kind=hf and hf_dir={hf_dir}, or distil "
                        "across tokenizers (config.salt.teacher_tokenizer=cross)")
    model, shardings = layout(cfg, salt, mesh)
    _, params = load_params(hf_dir, cfg, shardings)
    return OnlineTeacher(model=model, config=cfg, params=params, shardings=shardings, checkpoint=hf_dir,
                         fingerprint=hf_files.fingerprint(hf_dir), tokenizer=tok_fp, aligned=cross)


def check_same_teacher(config, identity: dict, previous: dict) -> None:
    """A resumed run keeps the teacher it was trained with (`identity`: Teacher.identity of this one)."""
    was = previous.get("teacher") or {}
    if was and was.get("fingerprint") != identity["fingerprint"]:
        raise UserError(f"config.salt.teacher={config.salt.teacher}: this run was trained with teacher "
                        f"{was.get('checkpoint')} (fingerprint {was.get('fingerprint')}), not "
                        f"{identity['checkpoint']} (fingerprint {identity['fingerprint']}); resume with the same "
                        "teacher or use a fresh --workdir")


def load_for_run(config, tok, mesh, previous: dict, source: TeacherSource | None = None) -> OnlineTeacher:
    """The run's teacher restored onto the mesh (`source`, default config.salt.teacher resolved), logged, and
    checked to be the one a resumed run was trained with."""
    teacher = load_teacher(config.salt, config.model, tok.fingerprint(), mesh, source)
    logging.info("teacher %s: %s parameters, fingerprint %s", teacher.checkpoint,
                 f"{param_count(teacher.config):,}", teacher.fingerprint)
    check_same_teacher(config, teacher.identity(), previous)
    return teacher


TOKENIZER_CHOICES = ("auto", "same", "adopt", "cross")  # config.salt.teacher_tokenizer (resolve_tokenizers)
SAME, ADOPT, CROSS = "same", "adopt", "cross"


def resolve_tokenizers(config: ml_collections.ConfigDict, source: TeacherSource | None = None) -> None:
    """Decides, once, how the student and a teacher with a tokenizer of its own meet: config.salt.teacher_tokenizer
    becomes same, adopt or cross (changing `config` in place; salt_jax.config.resolved calls it on its new copy),
    and the decision is logged.

    same: one tokenizer for both (a differing one is refused, as before cross-tokenizer KD existed);
    adopt: the student tokenizes with the teacher's tokenizer and takes its vocabulary size
    (`adopt_teacher_vocabulary`); cross: the student keeps its own and distils by ALM over aligned chunks
    (salt_jax.kd.alm). auto: same when the tokenizers are one (a SentencePiece model still to be trained counts
    as a salt_jax teacher's when it is of the same kind and size), else cross: a teacher never changes the
    student's tokenizer unless asked to (adopt).
    A teacher not found is left to the run's own checks (the field stays as given).
    """
    salt = config.salt
    if not methods.method(salt.method).teacher or not salt.teacher:
        return
    choice = salt.teacher_tokenizer
    if source is None:
        try:
            source = resolve(salt.teacher)
        except UserError:
            return
    info = recorded_tokenizer(source)
    if choice == "auto":
        choice = _auto_choice(config, source, info)
    if choice == ADOPT:
        if teacher_hf_info(source) is not None:  # a Hugging Face directory, or a checkpoint imported from one
            adopt_teacher_vocabulary(config, source)
        else:
            _adopt_checkpoint_tokenizer(config, info, source)
    salt.teacher_tokenizer = choice
    if choice == CROSS:
        _check_cross(config)
    logging.info("teacher tokenizer: %s (config.salt.teacher_tokenizer): %s", choice, {
        SAME: "teacher and student share one tokenizer",
        ADOPT: f"the student tokenizes with the teacher's tokenizer ({info['fingerprint'] or source.path})",
        CROSS: f"the student keeps its own tokenizer ({config.data.tokenizer.kind}), the teacher tokenizes with "
               f"{info['fingerprint'] or 'its own'}; KD by approximate likelihood matching over aligned chunks "
               "(teacher_tokenizer=adopt: the student takes the teacher's tokenizer instead)"}[choice])


def _auto_choice(config, source: TeacherSource, info: dict) -> str:
    """auto: same where the two tokenizers are one, else cross (the student keeps the tokenizer its config names;
    it adopts the teacher's only when asked, teacher_tokenizer=adopt)."""
    try:
        fp, tok_vocab = described(config.data.tokenizer)
    except UserError:
        return SAME  # (the run's own checks say what is wrong with the student's tokenizer)
    want = info["fingerprint"]
    if not want or fp == want:
        return SAME
    if fp is None:  # a SentencePiece model still to be trained: the teacher's when of the same kind and size
        return SAME if want.startswith("sp-") and info["tokenizer_vocab"] in (None, tok_vocab) else CROSS
    return CROSS


def _adopt_checkpoint_tokenizer(config, info: dict, source: TeacherSource) -> None:
    """teacher_tokenizer=adopt with a salt_jax teacher: the student takes its kept SentencePiece model (or bytes)."""
    t = config.data.tokenizer
    if info["fingerprint"] == "bytes-v1":
        t.kind = "bytes"
    elif info["model_file"]:
        t.kind, t.model_file = "sentencepiece", info["model_file"]
    else:
        raise UserError(f"config.salt.teacher_tokenizer=adopt: the teacher {source.directory} keeps no tokenizer "
                        "the student can take; set config.data.tokenizer to the teacher's settings")
    if info["vocab"]:
        config.model.vocab_size = info["vocab"]
    logging.info("teacher tokenizer: adopting the teacher's (kind=%s%s)", t.kind,
                 f", model_file={t.model_file}" if t.kind == "sentencepiece" else "")


def _check_cross(config) -> None:
    """What cross-tokenizer KD cannot do, refused with the field to change."""
    salt = config.salt
    check = [("kd_loss", salt.kd_loss in alm.KINDS, f"use {' or '.join(alm.KINDS)} (ALM's binarised divergence; "
              "top-k needs a shared vocabulary)"),
             ("token_select", salt.token_select == "none", "use none (the teacher's ranks are over its own vocabulary)"),
             ("ds_rule", not methods.method(salt.method).selects_data or salt.ds_rule != "difference",
              "use median_topk or loss (the reference model would need a third tokenization)")]
    for field, ok, hint in check:
        if not ok:
            raise UserError(f"config.salt.{field}={salt[field]!r}: not available across tokenizers "
                            f"(config.salt.teacher_tokenizer=cross); {hint}")


def teacher_tokenizer(source: TeacherSource, cache_dirs=()):
    """The tokenizer a teacher was trained with (cross-tokenizer KD encodes the student's text with it): a Hugging
    Face directory's tokenizer.json, or the one a salt_jax teacher's run kept (its fingerprint checked)."""
    if source.kind == HF:
        if not os.path.isfile(os.path.join(source.path, "tokenizer.json")):
            raise UserError(f"{source.field}={source.path}: has no tokenizer.json; a teacher with another tokenizer "
                            "reads the student's text in its own tokens (save its tokenizer with save_pretrained "
                            "beside the model)")
        return HFTokenizer(source.path)
    record = read_record(source.root, source.step)
    run_config_file = paths.join(source.run_dir, "config.json")
    run_config = paths.read_json(run_config_file) if paths.exists(run_config_file) else {}
    tok = run_tokenizer(source.run_dir, record, run_config, cache_dirs)
    if tok is None:
        raise UserError(f"{source.field}={source.path}: the teacher keeps no tokenizer; cross-tokenizer KD encodes "
                        "the student's text with it (copy its tokenizer files into its tokenizer/ directory)")
    return tok


def adopt_teacher_vocabulary(config: ml_collections.ConfigDict, source: TeacherSource | None = None) -> None:
    """With an HF teacher: tokenize with its tokenizer and give the student its vocabulary size.

    data.tokenizer.kind becomes "hf" with hf_dir the teacher's tokenizer (a
    student must share its teacher's tokenizer); model.vocab_size, when still
    the preset's, becomes the teacher's (the HF config's vocab_size, which may
    exceed the tokenizer's). `source`: config.salt.teacher resolved (default:
    resolved here; a teacher not found is left to the run's own checks). It
    changes `config` in place: salt_jax.config.resolved calls it on its new copy,
    the one place a run's config is resolved.
    """
    if not methods.method(config.salt.method).teacher or not config.salt.teacher:
        return
    if source is None:
        try:
            source = resolve(config.salt.teacher)
        except UserError:
            return
    info = teacher_hf_info(source)
    if info is None:
        return
    tok_dir, vocab = info
    t, m = config.data.tokenizer, config.model
    if tok_dir and (t.kind != "hf" or not t.hf_dir):  # any other tokenizer would fail the teacher's check
        logging.info("Hugging Face teacher: tokenizing with its tokenizer (%s) instead of kind=%s", tok_dir, t.kind)
        t.kind, t.hf_dir = "hf", t.hf_dir or tok_dir
    if m.vocab_size != vocab:
        preset_vocab = presets.model_config(m.preset).vocab_size if m.preset in presets.PRESETS else None
        if m.vocab_size != preset_vocab:
            raise UserError(f"config.model.vocab_size={m.vocab_size}: the Hugging Face teacher's vocabulary is "
                            f"{vocab}; set config.model.vocab_size={vocab} (or leave the preset's)")
        logging.info("Hugging Face teacher: config.model.vocab_size %d -> %d (the teacher's)", m.vocab_size, vocab)
        m.vocab_size = vocab
