"""The run config: defaults with one comment per field, and validation.

Config files in configs/ start from `base_config(preset)` and change what they
need; any field can then be overridden on the command line
(`--config.optim.learning_rate=1e-3`).

Validation stays here, one small function per section that `validate` calls
in order, because many checks cross sections (seq_len against max_len,
cache_k against vocab_size, a method against its teacher fields) and a bad
config should fail before anything is built. Each fixed set of allowed values
is defined once, by the module that gives the values their meaning
(methods.METHODS, losses.KD_LOSSES, schedules.SCHEDULES, tokenizer.KINDS,
sources.SOURCES, ...); `CHOICES` maps the fields to those objects, and both
`validate` and --help (`field_help`) read it, so a new option is added in one
place.
Renamed fields are read under their new names (salt_jax.renamed).
"""

from __future__ import annotations

import copy
import json

import ml_collections

from salt_jax import renamed
from salt_jax.data import mixture, sources, tokenizer
from salt_jax.errors import UserError, check, listed, one_of
from salt_jax.kd import losses, methods, objective, schedules, selection, sparse, teacher_cache
from salt_jax.kd import teacher as teacher_lib
from salt_jax.model import attention, presets, sharding, transformer
from salt_jax.model.transformer import option


def base_config(preset: str = "test-tiny") -> ml_collections.ConfigDict:
    """Every field of a run config with its default: the one place defaults are stated.

    The model section comes from `preset` (salt_jax.model.presets); each other
    field carries a one-line comment. Code reads fields directly
    (config.train.loss); the one fallback is the model's architecture options
    (`salt_jax.model.transformer.option`, and `attention`), which a model config
    read from an older checkpoint's record may lack.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameter-initialisation seed

    c.model = presets.model_config(preset)  # the Transformer; see salt_jax/model/presets.py

    c.data = d = ml_collections.ConfigDict()
    d.source = "stdlib"  # stdlib (the running Python's standard library) | text (files / JSONL / Parquet) | tfds | seqio | arrayrecord | hf (a Hugging Face dataset)
    d.path = ""  # source=text / arrayrecord: comma-separated files, directories or globs; text reads by extension: .jsonl/.json (also .gz/.zst), .parquet, else one document per file
    d.heldout_path = ""  # source=arrayrecord: held-out files ("" = hash-split the records of `path`)
    d.text_field = "text"  # field holding a document's text (JSONL, Parquet column, TFDS features, seqio examples, JSON records, hf column)
    d.mixture = ""  # several corpora instead of the one above: "NAME:WEIGHT=PATH[|FIELD=VALUE],..." (docs/data.md "Mixtures of corpora"); "" = one corpus
    d.tfds_name = ""  # source=tfds: dataset name (e.g. "c4/en:3.1.0", or one prepared under tfds_data_dir)
    d.tfds_data_dir = ""  # source=tfds: TFDS data_dir (a local path or a gs:// bucket)
    d.seqio_task = ""  # source=seqio: registered task name (its raw text; its vocabulary is not used)
    d.seqio_module = ""  # source=seqio: comma-separated modules to import so the task is registered
    d.hf_dataset = ""  # source=hf: a save_to_disk directory, a directory of data files, or a Hub name (streamed; prepare first for large runs)
    d.hf_config = ""  # source=hf: the dataset's configuration name (e.g. "sample-10BT"; "" = its default)
    d.hf_split = "train"  # source=hf: the split trained on
    d.hf_heldout_split = ""  # source=hf: the split evaluated on ("" = records of hf_split held out by heldout_fraction)
    d.train_split = "train"  # source=tfds / seqio: the split trained on
    d.heldout_split = "validation"  # source=tfds / seqio: the split evaluated on
    d.heldout_fraction = 0.05  # stdlib / text / arrayrecord / hf: fraction held out for evaluation (by a hash of the path or record)
    d.max_files = 0  # use only the first N files (sorted), 0 = all; for quick experiments
    d.seq_len = 128  # tokens per training sequence
    d.batch_size = 16  # global batch size in sequences (divisible by mesh data*fsdp)
    d.seed = 0  # data-order seed: the batch of step s depends only on (cache, seed, s)
    d.cache_dir = ""  # token / tokenizer cache; "" = $SALT_JAX_CACHE or ~/.cache/salt_jax
    d.prefetch = 2  # steps of batches read ahead in a background thread; 0 = read each batch when its step runs
    d.shard_chars = 16_000_000  # text per token-store shard, one worker task (file sources: bytes of files)
    d.shared_cache = False  # cache_dir is a file system all hosts mount (NFS): they build one store together (gs:// always)
    d.heldout_batches = 8  # held-out batches per evaluation (fixed, in order), 0 = the whole split
    d.tokenizer = t = ml_collections.ConfigDict()
    t.kind = "bytes"  # "bytes" (259 ids), "sentencepiece" (trained on the train split, cached) or "hf" (hf_dir's)
    t.vocab_size = 2048  # SentencePiece vocabulary size (must not exceed model.vocab_size)
    t.model_type = "bpe"  # SentencePiece algorithm: "bpe" or "unigram"
    t.max_train_lines = 200_000  # lines sampled from the train split to train SentencePiece on
    t.model_file = ""  # use this existing SentencePiece .model instead of training one
    t.hf_dir = ""  # kind=hf: a local Hugging Face directory with tokenizer.json; set from a Hugging Face teacher

    c.optim = o = ml_collections.ConfigDict()
    o.learning_rate = 3e-3  # peak learning rate
    o.schedule = "cosine"  # decay after warmup, to final_lr_fraction of the peak (constant: none)
    o.warmup_steps = 20  # linear warmup from 0 to the peak
    o.final_lr_fraction = 0.1  # learning rate at the last step, as a fraction of the peak
    o.b1 = 0.9  # AdamW beta1
    o.b2 = 0.95  # AdamW beta2
    o.eps = 1e-8  # AdamW epsilon
    o.weight_decay = 0.1  # decoupled weight decay on matrices (not norm scales)
    o.grad_clip = 1.0  # clip gradients to this global norm, 0 = off

    c.mesh = m = ml_collections.ConfigDict()
    m.data = -1  # data-parallel axis size (-1 = the devices the other axes leave)
    m.fsdp = 1  # fully-sharded data-parallel axis: parameters split over it, batch too
    m.tensor = 1  # tensor-parallel axis: heads / mlp / vocab split over it

    c.salt = salt = ml_collections.ConfigDict()
    salt.method = "baseline"  # the method (salt_jax/kd/methods.py); teacher: a baseline run that makes a teacher
    salt.teacher = ""  # the teacher: its run's workdir, a checkpoint directory, or a Hugging Face model directory
    salt.teacher_tokenizer = "auto"  # a teacher with its own tokenizer: same (must equal the student's) | adopt (the student takes it) | cross (the student keeps its own; ALM) | auto (decided once, written to config.json: docs/cross-tokenizer.md)
    salt.teacher_seq_len = 0  # teacher_tokenizer=cross: the teacher's tokens per window; 0 = measured from both tokenizers' bytes per token (alignment.teacher_len)
    salt.alm_temperature = 100.0  # teacher_tokenizer=cross: ALM's binarisation temperature b, chunk probabilities exp(log-lik / b) (tokenkit's default; kd/alm.py)
    salt.teacher_preset = ""  # the teacher's model preset (salt_jax.compile needs no teacher then); a run checks it

    salt.teacher_sharding = "sharded"  # teacher parameters on the mesh: "sharded" (same rules) or "replicated"
    salt.teacher_dtype = ""  # hold the teacher's parameters and compute in this dtype ("bfloat16" on accelerators; "" = as trained)
    salt.kd_weight = 0.5  # w0, the KD weight while distilling (ours: the paper does not give it)
    salt.temperature = 1.0  # tau for the KD term (ours: the paper does not give it)
    salt.kd_loss = "forward_kl"  # forward_kl: tau^2 KL(teacher||student); reverse_kl; topk_kl (teacher's top-salt, renormalised)
    salt.kd_topk = 0  # salt for kd_loss=topk_kl
    salt.weight_schedule = "step"  # w inside the KD phase: step (w0 until n_KD) | linear | cosine (w0 at 0 -> 0 at n_KD) | with_lr (follows the learning rate, 0 at n_KD)
    salt.temperature_schedule = "constant"  # tau over the KD phase; linear / cosine: temperature -> temperature_end at n_KD
    salt.temperature_end = 1.0  # temperature_schedule=linear / cosine: tau at n_KD
    salt.teacher_logits = "online"  # online (the teacher runs inside the step) | cache (the teacher cache: its sparse targets read from disk, no teacher forward)
    salt.cache_targets = "topk"  # teacher_logits=cache: topk (renormalised) | topk_other (top-salt + one bucket for the rest) | sampled (salt ids drawn from the teacher)
    salt.cache_k = 64  # teacher_logits=cache: ids stored per position (the top-salt, or the number of samples)
    salt.cache_dtype = "float16"  # teacher_logits=cache: dtype of the stored log-probs
    salt.kd_steps = -1  # n_KD: distil for the first n_KD steps; -1 = kd_fraction * train.steps
    salt.kd_fraction = 0.175  # n_KD as a fraction of the run when kd_steps=-1 (paper: 36K of ~208K steps)
    salt.transition = "step"  # after n_KD: step (w -> 0), linear (w decays over transition_steps), ratio (KD share of sequences decays)
    salt.transition_steps = -1  # length of the linear / ratio transition in steps; -1 = half of n_KD (ours)
    salt.switch = "fixed"  # fixed (n_KD from the schedule) or adaptive (stop when the student catches the teacher)
    salt.adaptive_margin = 0.0  # adaptive: switch once smoothed student NTP loss <= smoothed teacher NTP loss + margin
    salt.adaptive_ema = 0.98  # adaptive: EMA decay of the per-step NTP losses (debiased)
    salt.adaptive_min_steps = -1  # adaptive: never switch before this step; -1 = 5% of the run (ours)
    salt.adaptive_max_steps = -1  # adaptive: switch at this step at the latest; -1 = half the run (ours), 0 = no limit
    salt.token_select = "none"  # KD only where the teacher is good: none | topk (target in teacher top-salt) | confidence
    salt.token_select_k = 10  # token_select=topk: the salt
    salt.token_select_threshold = 0.5  # token_select=confidence: teacher's top probability must exceed this
    salt.ds_rule = "median_topk"  # salt_ds score (kept: highest): median_topk (paper) | difference (MiniPLM: teacher - reference log-lik.) | loss (teacher loss)
    salt.ds_reference = ""  # ds_rule=difference: the reference model, smaller than the teacher (a run workdir or checkpoint directory)
    salt.ds_topk = 10  # salt_ds: a token is learnable when its target is in the teacher's top-salt (paper: 10)
    salt.ds_pool_size = -1  # salt_ds: sequences scored; -1 = enough for the KD phase at ds_keep_fraction, 0 = all
    salt.ds_keep_fraction = 0.5  # salt_ds: share of the pool kept for the KD phase, highest scores first (ours)
    salt.ds_band_low = 0.0  # salt_ds: only scores at or above this percentile of the pool are eligible
    salt.ds_band_high = 100.0  # salt_ds: only scores at or below this percentile of the pool are eligible
    salt.ds_seed = 0  # salt_ds: seed of the pool draw and of tie-breaking in the selection

    c.train = r = ml_collections.ConfigDict()
    r.steps = 200  # total training steps
    r.log_every = 10  # write a train metrics line every N steps
    r.heldout_every = 50  # evaluate on the held-out set every N steps (and at the last step)
    r.checkpoint_every = 100  # save a checkpoint every N steps (and at the last step)
    r.keep_checkpoints = 3  # keep the last K checkpoints
    r.progress = True  # print a one-line progress report every log_every steps
    r.loss = "dense"  # dense (full [batch, seq, vocab] logits; the reference) | chunked (salt_jax.kd.chunked_loss)
    r.loss_chunk = 256  # loss=chunked: sequence positions per chunk (logits held: batch x chunk x vocab per model)
    r.nan_policy = "stop"  # non-finite loss or gradients: stop (keep the last good checkpoint) | skip (drop that update)
    r.max_skipped_steps = 20  # nan_policy=skip: stop after this many non-finite steps in a row
    r.preemption_grace_s = 30.0  # on SIGTERM: checkpoint the step reached and exit 0; exit 3 if that takes longer
    r.debug_nan_steps = ""  # fault injection: comma-separated steps whose loss is made NaN (drills and tests)
    r.debug_kill = ""  # fault injection: comma-separated step:N (SIGKILL after step N) / save:N (while checkpoint N is written) / cache:N (after teacher-cache step N)
    r.peak_tflops = 0.0  # per-device peak for MFU in metrics.jsonl; 0 = from the device kind (null if unknown)

    c.eval = e = ml_collections.ConfigDict()
    e.tasks = ""  # lm-eval tasks scored during training, comma-separated ("" = none); offline: salt_jax/eval/tasks
    e.every = 0  # few-shot evaluation every N steps, at step 0 and at the last step; 0 = train.heldout_every
    e.steps = ""  # instead of `every`: at these steps (comma-separated; "25%" = a share of train.steps), at step 0 and at the last step
    e.num_fewshot = -1  # few-shot examples per prompt; -1 = each task's default
    e.limit = 0  # documents per task, 0 = all of them
    e.batch_size = 32  # sequences per forward pass of the scoring engine (rounded up to the mesh's rows)
    e.include_path = ""  # a directory of extra lm-eval task YAML files
    e.seed = 1234  # seed of lm-eval's few-shot example sampling (and of sampled generation)

    c.logging = g = ml_collections.ConfigDict()
    g.wandb = False  # also send metrics.jsonl's scalars to Weights & Biases (process 0; pip install -e '.[wandb]')
    g.wandb_project = "salt_jax"  # W&B project
    g.wandb_entity = ""  # W&B team or user ("" = your default entity)
    g.wandb_name = ""  # W&B run name ("" = the workdir's basename); the run's id is kept in <workdir>/wandb_run_id
    g.wandb_mode = "online"  # offline: local files, upload later with `wandb sync DIR/wandb/offline-run-*`; overrides $WANDB_MODE
    g.wandb_dir = ""  # W&B's local files go to DIR/wandb ("" = $WANDB_DIR, else the workdir; a gs:// workdir: the current directory)
    g.wandb_tags = ""  # W&B run tags, comma-separated
    return c


def set_method(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """Applies a named variant of the method table (salt_jax.kd.methods) to a run config.

    Step counts derived from the run's length stay -1 here and are resolved by
    `resolved` when the run starts, so overriding train.steps later keeps them
    proportional.
    """
    row = methods.variant(variant)
    c.salt.method = row.method
    for field, value in row.overrides.items():
        c.salt[field] = value
    return c


# Fields with a fixed set of values -> the set, defined once by the module that gives the values their meaning;
# `validate` checks these fields against them and --help (`field_help`) lists them. The three sets whose meaning
# lives in salt_jax/train/ are defined here (config may not import train/, which imports config).
LR_SCHEDULES = ("cosine", "linear", "constant")  # config.optim.schedule: train.optim.lr_schedule's decays
NAN_POLICIES = ("stop", "skip")  # config.train.nan_policy: train.faults.NonFiniteCheck, train.step.Guard
WANDB_MODES = ("online", "offline", "disabled")  # config.logging.wandb_mode: wandb.init's modes (train.wandb_log)

CHOICES = {
    "model.norm": transformer.NORMS,
    "model.mlp": transformer.MLPS,
    "model.positions": transformer.POSITIONS,
    "model.activation": transformer.ACTIVATIONS,
    "model.dtype": transformer.DTYPES,
    "model.param_dtype": transformer.DTYPES,
    "model.remat": transformer.REMAT_POLICIES,
    "model.attention": attention.IMPLEMENTATIONS,
    "data.source": sources.SOURCES,
    "data.tokenizer.kind": tokenizer.KINDS,
    "optim.schedule": LR_SCHEDULES,
    "salt.method": methods.METHODS,
    "salt.teacher_sharding": sharding.PARAM_LAYOUTS,
    "salt.transition": schedules.TRANSITIONS,
    "salt.switch": schedules.SWITCHES,
    "salt.kd_loss": losses.KD_LOSSES,
    "salt.weight_schedule": schedules.SCHEDULES,
    "salt.temperature_schedule": schedules.TEMPERATURE_SCHEDULES,
    "salt.teacher_logits": teacher_cache.TEACHER_LOGITS,
    "salt.teacher_tokenizer": teacher_lib.TOKENIZER_CHOICES,
    "salt.cache_targets": sparse.KINDS,
    "salt.cache_dtype": teacher_cache.CACHE_DTYPES,
    "salt.ds_rule": selection.RULES,
    "salt.token_select": losses.TOKEN_SELECTIONS,
    "salt.teacher_preset": presets.PRESETS,
    "salt.teacher_dtype": transformer.DTYPES,
    "train.loss": objective.LOSSES,
    "train.nan_policy": NAN_POLICIES,
    "logging.wandb_mode": WANDB_MODES,
}
CAN_BE_EMPTY = ("salt.teacher_preset", "salt.teacher_dtype")  # "" is allowed too (none / as trained)
# How a bad value's error names the allowed ones (docs/errors.md records these words): 'a', 'b' or 'c' for
# these fields, "one of a, b, c" for the others.
_QUOTED = ("data.tokenizer.kind", "optim.schedule", "salt.teacher_sharding", "salt.transition", "salt.switch",
           "salt.kd_loss", "salt.token_select", "train.loss", "train.nan_policy", "logging.wandb_mode")
_ERROR_NOTE = {"data.source": "unknown source; "}  # (as salt_jax.data.sources.make_source says it)


def _value(c: ml_collections.ConfigDict, name: str):
    section, field = name.rsplit(".", 1)
    if section == "model" and field in transformer.OPTIONS:
        return option(c.model, field)  # (a model config of an older checkpoint may lack it)
    for part in section.split("."):
        c = c[part]
    return c[field]


def _choice(c: ml_collections.ConfigDict, name: str) -> None:
    """Checks a field of CHOICES against its allowed values."""
    value, allowed = _value(c, name), CHOICES[name]
    empty = name in CAN_BE_EMPTY
    if value in allowed or (empty and value == ""):
        return
    values = ("'' or " if empty else "") + (listed(allowed) if name in _QUOTED else one_of(allowed))
    raise UserError(f"config.{name}={value!r}: {_ERROR_NOTE.get(name, '')}use {values}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Raises UserError naming the first bad field and what to do; `c` is left as it is.

    One function per section, in this order; checks that cross sections sit with the field they report.
    """
    _model(c)
    _data(c)
    _optim(c)
    _mesh(c)
    _salt(c)
    _train(c)
    _eval(c)
    _logging(c)


def _model(c: ml_collections.ConfigDict) -> None:
    m = c.model
    for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim", "max_len"):
        check(isinstance(m[f], int) and m[f] > 0, f"config.model.{f}={m[f]!r}: must be a positive integer")
    check(m.n_heads % m.n_kv_heads == 0,
          f"config.model.n_kv_heads={m.n_kv_heads}: must divide n_heads={m.n_heads}")
    check(option(m, "positions") != "rope" or m.head_dim % 2 == 0,
          f"config.model.head_dim={m.head_dim}: must be even (rotary embedding)")
    for f in ("norm", "mlp", "positions", "activation"):
        _choice(c, f"model.{f}")
    pattern, letters = option(m, "local_layers"), transformer.LAYER_LETTERS
    check(not pattern or (len(pattern) == m.n_layers and set(pattern) <= set(letters)),
          f"config.model.local_layers={pattern!r}: give one letter per layer ({m.n_layers}), "
          f"{' or '.join(letters)}, or \"\"")
    for f in ("dtype", "param_dtype", "remat", "attention"):
        _choice(c, f"model.{f}")


def _data(c: ml_collections.ConfigDict) -> None:
    d, m = c.data, c.model
    if d.mixture:
        mixture.parse(d)  # (a bad spec: one line naming the component; each component names its source)
    else:
        _choice(c, "data.source")
    check(d.prefetch >= 0, f"config.data.prefetch={d.prefetch}: must be >= 0")
    check(d.shard_chars > 0, f"config.data.shard_chars={d.shard_chars}: must be positive")
    check(d.seq_len > 0, f"config.data.seq_len={d.seq_len}: must be positive")
    check(d.seq_len <= m.max_len, f"config.data.seq_len={d.seq_len}: exceeds config.model.max_len={m.max_len}; "
          "lower seq_len or raise max_len")
    check(d.batch_size > 0, f"config.data.batch_size={d.batch_size}: must be positive")
    check(0.0 < d.heldout_fraction < 1.0,
          f"config.data.heldout_fraction={d.heldout_fraction}: must be strictly between 0 and 1")
    _choice(c, "data.tokenizer.kind")
    if d.tokenizer.kind == "sentencepiece" and not d.tokenizer.model_file:
        check(d.tokenizer.vocab_size <= m.vocab_size,
              f"config.data.tokenizer.vocab_size={d.tokenizer.vocab_size}: exceeds config.model.vocab_size="
              f"{m.vocab_size}; make them equal")


def _optim(c: ml_collections.ConfigDict) -> None:
    o = c.optim
    check(o.learning_rate > 0, f"config.optim.learning_rate={o.learning_rate}: must be positive")
    _choice(c, "optim.schedule")
    check(o.warmup_steps >= 0, f"config.optim.warmup_steps={o.warmup_steps}: must be >= 0")


def _mesh(c: ml_collections.ConfigDict) -> None:
    sharding.check_sizes(c.mesh)  # (whether they fit the devices is known only where the mesh is made)


def _salt(c: ml_collections.ConfigDict) -> None:
    salt = c.salt
    for f in ("method", "teacher_sharding", "transition", "switch", "kd_loss", "weight_schedule",
              "temperature_schedule", "teacher_logits", "cache_targets", "cache_dtype", "ds_rule", "token_select",
              "teacher_tokenizer"):
        _choice(c, f"salt.{f}")
    method = methods.method(salt.method)
    if method.teacher:
        _teacher_fields(c, method)
    check(salt.switch == "fixed" or method.kd_ends,
          f"config.salt.switch=adaptive applies to methods salt and salt_ds, not {salt.method!r}")
    if method.selects_data:
        _selection_fields(salt)
    if method.kd_ends:
        _phase_fields(salt)
    _choice(c, "salt.teacher_preset")
    _choice(c, "salt.teacher_dtype")


def _teacher_fields(c: ml_collections.ConfigDict, method: methods.Method) -> None:
    """config.salt for a method with a teacher: the teacher, the KD term and the teacher cache."""
    salt, vocab = c.salt, c.model.vocab_size
    check(bool(salt.teacher), f"config.salt.teacher is empty; method {salt.method!r} needs the teacher's workdir "
          "or checkpoint directory")
    check(0.0 < salt.kd_weight <= 1.0, f"config.salt.kd_weight={salt.kd_weight}: must be in (0, 1]")
    check(salt.temperature > 0, f"config.salt.temperature={salt.temperature}: must be positive")
    check(salt.alm_temperature > 0, f"config.salt.alm_temperature={salt.alm_temperature}: must be positive")
    check(salt.teacher_seq_len >= 0, f"config.salt.teacher_seq_len={salt.teacher_seq_len}: must be >= 0 (0 = measured)")
    check(salt.kd_loss != "topk_kl" or 0 < salt.kd_topk <= vocab,
          f"config.salt.kd_topk={salt.kd_topk}: must be in [1, vocab_size] for kd_loss=topk_kl")
    check(salt.token_select != "topk" or 0 < salt.token_select_k <= vocab,
          f"config.salt.token_select_k={salt.token_select_k}: must be in [1, config.model.vocab_size]")
    check(salt.temperature_schedule == "constant" or salt.temperature_end > 0,
          f"config.salt.temperature_end={salt.temperature_end}: must be positive")
    if salt.teacher_logits == "cache":
        check(0 < salt.cache_k <= vocab, f"config.salt.cache_k={salt.cache_k}: must be in [1, config.model.vocab_size]")
        for f, want, why in (("kd_loss", "forward_kl", "the cached targets give a forward KL"),
                             ("token_select", "none", "the cache holds no ranks"),
                             ("temperature_schedule", "constant", "the cache holds log-probs at one temperature")):
            check(salt[f] == want, f"config.salt.{f}={salt[f]!r}: teacher_logits=cache needs {f}={want!r} ({why})")
        check(not method.selects_data, "config.salt.teacher_logits=cache: not available for salt_ds (its KD "
              "batches are chosen by the teacher); use teacher_logits=online")


def _selection_fields(salt: ml_collections.ConfigDict) -> None:
    """config.salt for salt_ds: the pool, the rule and the share kept."""
    check(0.0 < salt.ds_keep_fraction <= 1.0, f"config.salt.ds_keep_fraction={salt.ds_keep_fraction}: must be in (0, 1]")
    check(0.0 <= salt.ds_band_low < salt.ds_band_high <= 100.0,
          f"config.salt.ds_band_low={salt.ds_band_low} / ds_band_high={salt.ds_band_high}: need 0 <= low < high <= 100")
    check(salt.ds_topk > 0, f"config.salt.ds_topk={salt.ds_topk}: must be positive")
    check(salt.ds_rule != "difference" or bool(salt.ds_reference), "config.salt.ds_reference is empty; "
          "ds_rule=difference needs a reference model (a run workdir or checkpoint smaller than the teacher)")
    check(salt.ds_pool_size >= -1, f"config.salt.ds_pool_size={salt.ds_pool_size}: must be >= -1")


def _phase_fields(salt: ml_collections.ConfigDict) -> None:
    """config.salt for a method whose KD phase ends: n_KD, the transition and the adaptive switch."""
    check(salt.kd_steps >= -1, f"config.salt.kd_steps={salt.kd_steps}: must be >= 0 (or -1 for kd_fraction)")
    check(0.0 < salt.kd_fraction <= 1.0, f"config.salt.kd_fraction={salt.kd_fraction}: must be in (0, 1]")
    check(salt.transition_steps == -1 or salt.transition_steps > 0,
          f"config.salt.transition_steps={salt.transition_steps}: must be positive (or -1 for half of n_KD)")
    check(not (salt.switch == "adaptive" and (salt.transition != "step" or salt.weight_schedule != "step")),
          "config.salt.switch=adaptive works with config.salt.transition=step and weight_schedule=step only")
    check(salt.transition == "step" or salt.weight_schedule == "step",
          f"config.salt.transition={salt.transition!r} applies to weight_schedule='step' only; set transition=step "
          f"with weight_schedule={salt.weight_schedule!r}")
    check(0.0 <= salt.adaptive_ema < 1.0, f"config.salt.adaptive_ema={salt.adaptive_ema}: must be in [0, 1)")
    check(not (salt.adaptive_max_steps > 0 and salt.adaptive_min_steps > salt.adaptive_max_steps),
          f"config.salt.adaptive_min_steps={salt.adaptive_min_steps} exceeds adaptive_max_steps="
          f"{salt.adaptive_max_steps}")


def _train(c: ml_collections.ConfigDict) -> None:
    r = c.train
    check(r.steps > 0, f"config.train.steps={r.steps}: must be positive")
    _choice(c, "train.loss")
    _choice(c, "train.nan_policy")
    check(r.max_skipped_steps > 0,
          f"config.train.max_skipped_steps={r.max_skipped_steps}: must be positive")
    check(r.preemption_grace_s > 0,
          f"config.train.preemption_grace_s={r.preemption_grace_s}: must be positive")
    check(r.loss_chunk > 0, f"config.train.loss_chunk={r.loss_chunk}: must be positive")
    for f in ("log_every", "heldout_every", "checkpoint_every", "keep_checkpoints"):
        check(r[f] > 0, f"config.train.{f}={r[f]}: must be positive")


def _eval(c: ml_collections.ConfigDict) -> None:
    e = c.eval
    for f in ("every", "limit"):
        check(e[f] >= 0, f"config.eval.{f}={e[f]}: must be 0 or more")
    check(e.batch_size > 0, f"config.eval.batch_size={e.batch_size}: must be positive")
    check(all(x.strip().removesuffix("%").isdigit() for x in e.steps.split(",") if x.strip()),
          f"config.eval.steps={e.steps!r}: give comma-separated step numbers or shares of the run, e.g. "
          "'125,250,350' or '25%,50%,70%'")
    check(e.num_fewshot >= -1, f"config.eval.num_fewshot={e.num_fewshot}: use -1 (the tasks' own) or a count")


def _logging(c: ml_collections.ConfigDict) -> None:
    _choice(c, "logging.wandb_mode")


def resolved(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The run's config as it trains: a new value, decided once, that setup writes to config.json and every later
    function reads; the user's `c` is left as it is.

    Resolved: with a teacher, config.salt.teacher_tokenizer (auto -> same, adopt or cross) and, where the
    student adopts the teacher's tokenizer, config.data.tokenizer and model.vocab_size (kd.teacher.resolve_tokenizers,
    logged); config.salt's run-relative step counts (n_KD, the transition, the adaptive bounds;
    kd.schedules.resolved). Resolving a resolved config changes nothing.
    """
    out = copy.deepcopy(c)
    teacher_lib.resolve_tokenizers(out)
    out.salt = schedules.resolved(out.salt, out.train.steps)
    return out


def check_vocab(c: ml_collections.ConfigDict, tokenizer_vocab: int) -> None:
    if tokenizer_vocab > c.model.vocab_size:
        raise UserError(f"config.model.vocab_size={c.model.vocab_size} is smaller than the tokenizer's "
                        f"vocabulary ({tokenizer_vocab}); set config.model.vocab_size={tokenizer_vocab}")


# Fields a run may be resumed with changed: where things live, how often and where it logs, evaluates and saves,
# how it is laid out on the devices (checkpoints restore onto any mesh), and fault drills. None of them
# changes the parameters a run computes.
RESUMABLE_CHANGES = ("salt.teacher", "salt.teacher_preset", "salt.ds_reference", "data.cache_dir", "data.prefetch", "data.shard_chars",
                     "data.shared_cache", "data.heldout_batches", "train.log_every", "train.heldout_every",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.progress", "train.preemption_grace_s",
                     "train.debug_kill", "train.debug_nan_steps", "train.peak_tflops", "mesh", "eval", "logging")


def drift(saved: dict, now: ml_collections.ConfigDict, ignore: tuple[str, ...]) -> list[str]:
    """The fields (as "config.a.b (x there, y now)") in which config `now` differs from the `saved` config
    of a run, leaving out the `ignore` fields and sections. A field added to salt_jax since `saved` was
    written counts as its default (a new field's default keeps the old behaviour)."""
    as_json = lambda c: json.loads(c.to_json_best_effort())  # noqa: E731 -- as config.json holds it
    saved = _with_new_fields(renamed.upgrade(saved), as_json(base_config()))
    found: list[str] = []
    _diff(saved, as_json(now), "", set(ignore), found)
    return found


def _with_new_fields(saved: dict, defaults: dict) -> dict:
    out = dict(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _with_new_fields(out[key], value)
    return out


def _diff(a: dict, b: dict, prefix: str, ignore: set, found: list) -> None:
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        if name in ignore:
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            _diff(x, y, f"{name}.", ignore, found)
        elif x != y and not (isinstance(x, (int, float)) and isinstance(y, (int, float)) and float(x) == float(y)):
            found.append(f"config.{name} ({x!r} there, {y!r} now)")


def field_help() -> list[tuple[str, str, str]]:
    """(data.seq_len, its default, its comment) for every field of base_config, read from this file's
    source so the comments stay the one place fields are explained."""
    import inspect  # noqa: PLC0415
    import re  # noqa: PLC0415

    defaults = base_config().to_dict()
    sections, out = {"c": ""}, []
    for line in inspect.getsource(base_config).splitlines():
        sub = re.match(r"\s+(\w)\.(\w+) = (\w) = ml_collections\.ConfigDict\(\)", line)
        if sub:
            sections[sub.group(3)] = sections[sub.group(1)] + sub.group(2) + "."
            continue
        field = re.match(r"\s+(\w)\.(\w+) = .*?(?:  # (.*))?$", line)
        if field and field.group(1) in sections:
            name = sections[field.group(1)] + field.group(2)
            value = defaults
            for part in name.split("."):
                value = value[part]
            if isinstance(value, dict):  # the model section: its fields come from the preset
                out += [(f"{name}.{k}", repr(v), "from the preset (salt_jax/model/presets.py)")
                        for k, v in value.items()]
            else:
                out.append((name, repr(value), field.group(3) or ""))
    return [(name, default, " ".join(filter(None, (comment, allowed_values(name))))) for name, default, comment in out]


def allowed_values(name: str) -> str:
    """A field's allowed values as --help lists them ("[cosine | linear | constant]"), from CHOICES; "" for a
    field without a fixed set."""
    if name not in CHOICES:
        return ""
    return "[" + " | ".join((["''"] if name in CAN_BE_EMPTY else []) + list(CHOICES[name])) + "]"


def run_help(doc: str, flag_lines: list[str]) -> str:
    """A run command's --help: its usage, its flags, the :METHOD variants and every config field with
    its default and comment."""
    lines = [(doc or "").strip(), "", "flags:", *flag_lines, "",
             "--config=FILE:METHOD picks a method variant (configs/demo.py:salt):"]
    lines += [f"  {m.name:<14} {m.summary}" for m in methods.TABLE]
    lines += ["", "config fields (override any with --config.SECTION.FIELD=VALUE; default, then what it does):"]
    lines += [f"  {name} = {default}  # {comment}" if comment else f"  {name} = {default}"
              for name, default, comment in field_help()]
    return "\n".join(lines)
