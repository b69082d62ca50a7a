"""SALT_DS: the teacher scores training sequences; the KD phase trains on the chosen ones.

For a sequence with targets y_t and teacher logits z_t (Rawat et al. 2024, SALT_DS):

    l_t      = -log softmax(z_t)[y_t]                     the teacher's per-token loss
    K        = { t : y_t is among the teacher's top-k }   "learnable" tokens
    score    = median of l_t over K                       high = "challenging yet learnable"

"Among the top-k" means fewer than k vocabulary entries have a strictly larger
logit than the target's (`losses.target_rank`, the rule token-selective KD
uses too: ties count in the target's favour; k >= vocabulary size keeps every
token). A sequence with an empty K gets score NaN and is never
selected. The median of an even count is the mean of the two middle values
(as numpy.median).

That is the paper's rule (config.salt.ds_rule=median_topk). Two others rank by
per-sequence means over real tokens (`rule_scores`):

    loss        mean l_t                                          the teacher's plain loss
    difference  mean (log p_T - log p_R) = mean l^R_t - mean l_t  MiniPLM's difference sampling (Gu et
                                                                  al., ICLR 2025), R a smaller reference
                                                                  model: where the teacher has learnt
                                                                  most beyond it

Every rule keeps the highest scores. Scores of a pool are computed by a jitted, sharded teacher pass, saved next to
the token cache (keyed by teacher fingerprint, k and pool) and reused; a pass
that stops half-way resumes from its last saved chunk.

`kd_batches` is the whole of it for a run (salt_jax.train.setup calls it once):
draw the pool, score it (and, for difference, the reference model's scores),
rank, keep, write selection.json, and batch the KD phase from the kept rows.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from salt_jax import paths
from salt_jax.data.alignment import VERSION as ALIGNMENT_VERSION
from salt_jax.data.batches import Batches, host_rows
from salt_jax.data.store import Store, TokenStore, pool_rows  # noqa: F401 -- pool_rows: one corpus's pool
from salt_jax.errors import UserError
from salt_jax.hf.source import TeacherSource, resolve
from salt_jax.kd import losses
from salt_jax.kd import teacher as teacher_lib
from salt_jax.model.flops import flops_per_token, param_count
from salt_jax.model import sharding


def sequence_scores(logits: jax.Array, targets: jax.Array, mask: jax.Array, k: int) -> dict[str, jax.Array]:
    """Per-sequence {"score", "topk_fraction", "mean_loss"} from teacher logits [b, t, V]."""
    logits = logits.astype(jnp.float32)
    loss = losses.token_ce(logits, targets)  # [b, t]
    rank = losses.target_rank(logits, targets)  # entries strictly above the target
    mask = mask.astype(bool)
    learnable = (rank < k) & mask
    n = jnp.sum(learnable, axis=-1)  # [b]
    ordered = jnp.sort(jnp.where(learnable, loss, jnp.inf), axis=-1)
    lo = jnp.take_along_axis(ordered, jnp.maximum((n - 1) // 2, 0)[:, None], axis=-1)[:, 0]
    hi = jnp.take_along_axis(ordered, jnp.maximum(n // 2, 0)[:, None], axis=-1)[:, 0]
    n_real = jnp.maximum(jnp.sum(mask, axis=-1), 1)
    return {
        "score": jnp.where(n > 0, (lo + hi) / 2, jnp.nan),
        "topk_fraction": n / n_real,
        "mean_loss": jnp.sum(jnp.where(mask, loss, 0.0), axis=-1) / n_real,
    }


def _score_file(cache: TokenStore, teacher_fp: str, k: int, rows: np.ndarray, teacher_len: int = 0) -> str:
    """Scores depend on the rows' tokens, so on the sequence length that cuts the store into rows too (and,
    across tokenizers, on the teacher's length per row)."""
    pool_key = hashlib.sha256(rows.astype(np.int64).tobytes()).hexdigest()[:12]
    teacher = f"-U{teacher_len}a{ALIGNMENT_VERSION}" if teacher_len else ""  # (the alignment's rules too)
    return paths.join(cache.directory, "scores",
                      f"{teacher_fp}-k{k}-L{cache.train.seq_len}{teacher}-pool{len(rows)}-{pool_key}.npz")


def scoring_program(model, shardings, k: int, mesh, pad_id: int, aligned: bool = False):
    """The jitted scoring pass: (teacher params, tokens [batch, seq + 1]) -> per-sequence scores, replicated.
    `aligned` (a teacher with another tokenizer): (teacher params, the teacher's tokens [batch, U + 1], their
    chunks [batch, U]): the teacher scores its own tokenization of the rows, over its targets inside aligned
    chunks (salt_jax.data.alignment: the text the student trains on, the window's cut ends dropped)."""
    batch = sharding.batch_sharding(mesh)

    def scores_fn(params, tokens):
        inputs, targets, mask = losses.split_tokens(tokens, pad_id)
        return sequence_scores(model.apply({"params": params}, inputs), targets, mask, k)

    def aligned_fn(params, tokens, chunks):
        return sequence_scores(model.apply({"params": params}, tokens[:, :-1]), tokens[:, 1:], chunks >= 0, k)

    if aligned:
        return jax.jit(aligned_fn, in_shardings=(shardings, batch, batch), out_shardings=sharding.replicated(mesh))
    return jax.jit(scores_fn, in_shardings=(shardings, batch), out_shardings=sharding.replicated(mesh))


def score_pool(teacher, cache: TokenStore, rows: np.ndarray, k: int, batch_size: int, mesh, pad_id: int,
               save_every: int = 50, aligner=None) -> dict[str, np.ndarray]:
    """Scores of `rows` of the train split (cached; resumable).

    Returns arrays indexed like `rows` ("score", "topk_fraction", "mean_loss")
    and "seconds", the wall time the scoring pass took (kept with the cache,
    so runs reusing it still account for it). `aligner` (salt_jax.data.alignment.Aligner): a teacher with
    another tokenizer scores each row in its own tokenization.
    """
    path = _score_file(cache, teacher.fingerprint, k, rows, aligner.teacher_len if aligner else 0)
    if paths.exists(path):
        return _load_npz(path)
    partial = path + ".partial.npz"
    n = len(rows)
    out = {name: np.full(n, np.nan, np.float32) for name in ("score", "topk_fraction", "mean_loss")}
    done, spent = 0, 0.0
    if paths.exists(partial):
        try:
            f = _load_npz(partial)
            done, spent = int(f["done"]), float(f["seconds"])
            for name in out:
                out[name][:done] = f[name][:done]
            logging.info("scoring: resuming at %d of %d sequences", done, n)
        except (OSError, ValueError, KeyError):
            done = 0  # an unreadable partial file (crash mid-write) is just started over

    batch_sharding = sharding.batch_sharding(mesh)
    fn = scoring_program(teacher.model, teacher.shardings, k, mesh, pad_id, aligner is not None)
    seq = cache.train.seq_len
    t0, last_log = time.time(), time.time()
    paths.makedirs(paths.join(cache.directory, "scores"))
    batches_since_save = 0
    while done < n:
        take = min(batch_size, n - done)
        chunk = np.full((batch_size, seq + 1), pad_id, np.int32)  # the last batch is padded (fully masked)
        chunk[:take] = cache.train.rows(rows[done:done + take])
        local = chunk[host_rows(batch_size)]
        if aligner is None:
            args = (jax.make_array_from_process_local_data(batch_sharding, local, chunk.shape),)
        else:
            got = aligner.align(local)
            args = tuple(jax.make_array_from_process_local_data(batch_sharding, a, (batch_size, *a.shape[1:]))
                         for a in (got.teacher_tokens, got.teacher_chunks))
        with sharding.on_mesh(mesh):
            result = jax.device_get(fn(teacher.params, *args))
        for name in out:
            out[name][done:done + take] = result[name][:take]
        done += take
        batches_since_save += 1
        if batches_since_save >= save_every or done == n:
            _save_npz(partial, done=np.int64(done), seconds=np.float64(spent + time.time() - t0), **out)
            batches_since_save = 0
        if time.time() - last_log > 10 or done == n:
            rate = done / max(time.time() - t0, 1e-9)
            logging.info("scoring pool: %d/%d sequences (%.0f seq/s)", done, n, rate)
            last_log = time.time()
    out["seconds"] = np.float64(spent + time.time() - t0)  # wall time of the whole pass (all attempts)
    _save_npz(path, **out)
    if paths.exists(partial) and jax.process_index() == 0:
        paths.remove(partial)
    return out


def _load_npz(path: str) -> dict[str, np.ndarray]:
    with paths.open(path, "rb") as fh:
        with np.load(io.BytesIO(fh.read())) as f:
            return {name: f[name] for name in f.files}


def _save_npz(path: str, **arrays) -> None:
    """Writes atomically (paths.write_atomic) so a crash never leaves a torn file behind; process 0 only."""
    if jax.process_index() == 0:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        paths.write_atomic(path, buf.getvalue())


RULES = ("median_topk", "difference", "loss")  # config.salt.ds_rule


def rule_scores(rule: str, scores: dict[str, np.ndarray], reference: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The pool's ranking score under `rule` (higher = kept first); `reference`: the reference model's
    `score_pool` output (difference only)."""
    if rule == "median_topk":
        return scores["score"]
    if rule == "loss":
        return scores["mean_loss"]
    if rule == "difference":
        if reference is None:
            raise ValueError("ds_rule=difference needs the reference model's scores")
        return reference["mean_loss"] - scores["mean_loss"]
    raise ValueError(f"unknown selection rule {rule!r}")


def select(scores: np.ndarray, keep_fraction: float, band_low: float = 0.0, band_high: float = 100.0,
           seed: int = 0) -> np.ndarray:
    """Positions (into the pool) of the kept sequences, in a seeded random order.

    Eligible: a finite score within the [band_low, band_high] percentiles of the
    finite scores. Kept: the round(keep_fraction * pool) highest-scoring eligible
    sequences (all eligible ones if fewer); ties broken by the seed.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise UserError(f"config.salt.ds_keep_fraction={keep_fraction}: must be in (0, 1]")
    if not 0.0 <= band_low < band_high <= 100.0:
        raise UserError(f"config.salt.ds_band_low={band_low} / ds_band_high={band_high}: need "
                        "0 <= low < high <= 100 (percentiles)")
    finite = np.isfinite(scores)
    if not finite.any():
        raise UserError("SALT_DS selection is empty: no pooled sequence has a target in the teacher's top-k; "
                        "raise config.salt.ds_topk or check the teacher")
    lo, hi = np.percentile(scores[finite], [band_low, band_high])
    eligible = np.flatnonzero(finite & (scores >= lo) & (scores <= hi))
    n_keep = min(int(round(keep_fraction * len(scores))), len(eligible))
    if n_keep == 0:
        raise UserError(f"SALT_DS selection is empty (pool {len(scores)}, eligible {len(eligible)}); raise "
                        "config.salt.ds_keep_fraction or widen the percentile band")
    rng = np.random.default_rng([seed, 0xD5])
    shuffled = eligible[rng.permutation(len(eligible))]
    by_score = shuffled[np.argsort(-scores[shuffled], kind="stable")]  # ties keep the seeded order
    kept = by_score[:n_keep]
    return kept[rng.permutation(n_keep)]


def summary(scores: dict[str, np.ndarray], kept: np.ndarray, k: int, keep_fraction: float, band: tuple,
            rule: str = "median_topk", ranked: np.ndarray | None = None) -> dict:
    """Selection statistics for the run's outputs (`ranked`: the rule's scores, default the paper's)."""
    s = scores["score"] if ranked is None else ranked
    finite = s[np.isfinite(s)]
    q = lambda x: {f"p{p}": float(np.percentile(x, p)) for p in (0, 10, 25, 50, 75, 90, 100)}  # noqa: E731
    return {
        "rule": rule, "pool": int(len(s)), "kept": int(len(kept)),
        "no_topk_tokens": int(np.sum(~np.isfinite(scores["score"]))),
        "topk": k, "keep_fraction": keep_fraction, "band_percentiles": list(band),
        "score_quantiles_pool": q(finite), "score_quantiles_kept": q(s[kept]),
        "scoring_seconds": float(scores.get("seconds", 0.0)),
        "mean_loss_pool": float(np.nanmean(scores["mean_loss"])),
        "mean_loss_kept": float(np.nanmean(scores["mean_loss"][kept])),
        "topk_fraction_pool": float(np.nanmean(scores["topk_fraction"])),
        "topk_fraction_kept": float(np.nanmean(scores["topk_fraction"][kept])),
    }


def write_summary(workdir: str, info: dict) -> None:
    if jax.process_index() == 0:
        paths.write_json(paths.join(workdir, "selection.json"), info)


def load_reference(config, teacher, tok_fp: str, mesh,
                   source: TeacherSource | None = None) -> teacher_lib.OnlineTeacher:
    """ds_rule=difference: the reference model (config.salt.ds_reference; `source`: it resolved), read like a
    teacher; its errors name config.salt.ds_reference."""
    ref_salt = copy.deepcopy(config.salt)
    ref_salt.teacher, ref_salt.teacher_preset = config.salt.ds_reference, ""
    try:
        source = source or resolve(config.salt.ds_reference, "config.salt.ds_reference")
        ref = teacher_lib.load_teacher(ref_salt, config.model, tok_fp, mesh, source)
    except UserError as e:  # (a reference resolved under another field still names this one)
        raise UserError(str(e).replace("config.salt.teacher", "config.salt.ds_reference")) from None
    if ref.fingerprint == teacher.fingerprint:
        raise UserError(f"config.salt.ds_reference={config.salt.ds_reference}: is the teacher itself, so every "
                        "difference score is 0; use a smaller checkpoint than the teacher")
    logging.info("SALT_DS reference %s: %s parameters", ref.checkpoint, f"{param_count(ref.config):,}")
    return ref


def kd_batches(config, store: Store, teacher, mesh, tok, phase, workdir: str,
               reference: TeacherSource | None = None, aligner=None) -> Batches:
    """SALT_DS: score the pool with the teacher (and the reference model `reference`, default
    config.salt.ds_reference resolved, for ds_rule=difference), select, write the summary to workdir, and batch
    the KD phase (`phase`: salt_jax.kd.schedules.KDPhase) from the selection. `aligner`: a teacher with another
    tokenizer scores the pool in its own tokenization (score_pool)."""
    salt, cfg_d = config.salt, config.data
    pad_id, tok_fp = tok.pad_id, tok.fingerprint()
    pool_size = salt.ds_pool_size
    if pool_size == -1:  # enough sequences that the KD phase sees each kept one about once
        pool_size = min(store.train.n_rows, int(np.ceil(phase.end * cfg_d.batch_size / salt.ds_keep_fraction)))
    rows = store.pool_rows(pool_size, salt.ds_seed)  # (a mixture: each corpus by its weight)
    scores = score_pool(teacher, store, rows, salt.ds_topk, cfg_d.batch_size, mesh, pad_id, aligner=aligner)
    ref_scores = None
    if salt.ds_rule == "difference":
        ref = load_reference(config, teacher, tok_fp, mesh, reference)
        ref_scores = score_pool(ref, store, rows, salt.ds_topk, cfg_d.batch_size, mesh, pad_id)
        ref.release()
        scores = dict(scores, seconds=scores["seconds"] + ref_scores["seconds"])
    ranked = rule_scores(salt.ds_rule, scores, ref_scores)
    kept = select(ranked, salt.ds_keep_fraction, salt.ds_band_low, salt.ds_band_high, salt.ds_seed)
    info = summary(scores, kept, salt.ds_topk, salt.ds_keep_fraction, (salt.ds_band_low, salt.ds_band_high),
                   salt.ds_rule, ranked)
    if ref_scores is not None:
        info.update(reference_mean_loss_pool=float(np.nanmean(ref_scores["mean_loss"])),
                    reference_mean_loss_kept=float(np.nanmean(ref_scores["mean_loss"][kept])),
                    reference_flops_per_token=flops_per_token(ref.config, cfg_d.seq_len))  # (the report's compute)
    write_summary(workdir, info)
    logging.info("SALT_DS: kept %d of %d pooled sequences (median score %.3f kept vs %.3f pool)", info["kept"],
                 info["pool"], info["score_quantiles_kept"]["p50"], info["score_quantiles_pool"]["p50"])
    return Batches(store.train, cfg_d.batch_size, cfg_d.seed, rows=rows[kept])
