"""The SALT objective behind one call: the loss sums of one batch, with or without the teacher.

`loss(student, params, inputs, targets, mask)` is the next-token loss;
`loss(student, params, inputs, targets, mask, teacher=(model, params), kd_weight=w, temperature=tau)`
is sum over real tokens of (1 - w_t) NTP + w_t KD, with w_t the per-position
KD weight before token selection and tau the step's temperature
(salt_jax.train.step computes both from the schedules). With cached teacher
logits, `teacher` is the batch's sparse targets (salt_jax.kd.sparse.Targets)
and no teacher runs. Both return sums and counts (salt_jax.kd.losses): "loss_sum",
"correct", "tokens", and with a teacher "ntp_sum", "kd_sum", "kd_weight_sum",
"kd_tokens" and "teacher_ntp_sum". The teacher's forward runs under
stop_gradient. Two implementations of the same call:

    DenseLoss    full [batch, seq, vocab] logits of both models (the reference)
    ChunkedLoss  from final hidden states, one chunk of logits at a time
                 (salt_jax.kd.chunked_loss; equal values and gradients)

Across tokenizers (config.salt.teacher_tokenizer=cross) each has `aligned(student, params, batch, teacher,
kd_weight, temperature)`: batch is a salt_jax.data.alignment.AlignedBatch, teacher (model, params) or the
cached salt_jax.kd.alm.ChunkTargets, and the KD term is ALM (salt_jax.kd.alm) over the aligned chunks.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from salt_jax.kd import alm, losses, sparse
from salt_jax.data.alignment import MAX_CHUNK
from salt_jax.kd.chunked_loss import LossOptions, aligned_chunked_loss, chunked_loss, target_logprobs
from salt_jax.model.transformer import dtype_of, option


class DenseLoss:
    """The reference objective from full logits; `salt` holds the KD settings (config.salt)."""

    def __init__(self, salt: ml_collections.ConfigDict | None = None, pad_id: int = 0):
        self.salt, self.pad_id = salt, pad_id

    def __call__(self, student, params, inputs, targets, mask, teacher=None, kd_weight=None,
                 temperature=None) -> dict:
        if teacher is None:
            return losses.next_token_stats(student.apply({"params": params}, inputs), targets, mask)
        s = self.salt
        tau = s.temperature if temperature is None else temperature
        if isinstance(teacher, sparse.Targets):
            s_logits = student.apply({"params": params}, inputs)
            unit = isinstance(tau, (int, float)) and tau == 1  # known at trace time: KD reuses the CE's softmax
            ce, kd = sparse.ce_and_kd(s_logits, targets, teacher, tau, s.cache_targets, unit)
            stats = losses.mixture_stats(ce, kd, kd_weight, mask)
            stats.update(correct=jnp.sum((jnp.argmax(s_logits, -1) == targets) * mask),
                         tokens=jnp.sum(mask.astype(jnp.float32)),
                         teacher_ntp_sum=-jnp.sum(teacher.target_logp * mask))
            return stats
        t_model, t_params = teacher
        t_logits = jax.lax.stop_gradient(t_model.apply({"params": t_params}, inputs))
        selected = losses.teacher_selection(t_logits, targets, s.token_select, s.token_select_k,
                                            s.token_select_threshold)
        w_tok = kd_weight * selected
        s_logits = student.apply({"params": params}, inputs)
        ntp = losses.token_ce(s_logits, targets)
        kd = losses.full_kd_per_token(s_logits, t_logits, tau, s.kd_loss, s.kd_topk)
        stats = losses.mixture_stats(ntp, kd, w_tok, mask)
        stats.update(correct=jnp.sum((jnp.argmax(s_logits, -1) == targets) * mask),
                     tokens=jnp.sum(mask.astype(jnp.float32)),
                     teacher_ntp_sum=jnp.sum(losses.token_ce(t_logits, targets) * mask))
        return stats


    def aligned(self, student, params, batch, teacher, kd_weight, temperature) -> dict:
        """The cross-tokenizer sums (salt_jax.kd.alm.mixture_stats) from full logits."""
        inputs, targets, mask = losses.split_tokens(batch.tokens, self.pad_id)
        s_logits = student.apply({"params": params}, inputs)
        if not isinstance(teacher, alm.ChunkTargets):
            t_model, t_params = teacher
            t_in, t_targets = batch.teacher_tokens[:, :-1], batch.teacher_tokens[:, 1:]
            t_logits = jax.lax.stop_gradient(t_model.apply({"params": t_params}, t_in))
            teacher = alm.teacher_chunks(*alm.target_logprobs(t_logits, t_targets, temperature),
                                         batch.teacher_chunks, targets.shape[1])
        stats = alm.mixture_stats(alm.target_logprobs(s_logits, targets, temperature), teacher,
                                  batch.student_chunks, mask, kd_weight, self.salt.kd_loss,
                                  float(self.salt.alm_temperature))
        stats["correct"] = jnp.sum((jnp.argmax(s_logits, -1) == targets) * mask)
        return stats


class ChunkedLoss:
    """The same objective from hidden states (salt_jax.kd.chunked_loss), with the models' final soft-caps."""

    def __init__(self, opts: LossOptions, pad_id: int = 0):
        self.opts, self.pad_id = opts, pad_id

    def __call__(self, student, params, inputs, targets, mask, teacher=None, kd_weight=None,
                 temperature=None) -> dict:
        opts = dataclasses.replace(self.opts, student_softcap=float(option(student.cfg, "final_softcap")))
        if teacher is None:
            hidden, head = student.apply({"params": params}, inputs, return_hidden=True)
            stats = chunked_loss(hidden, head, targets, mask, opts)
            return {k: stats[k] for k in ("loss_sum", "correct", "tokens")}
        if isinstance(teacher, sparse.Targets):
            h_s, head_s = student.apply({"params": params}, inputs, return_hidden=True)
            return chunked_loss(h_s, head_s, targets, mask, opts, teacher, None, kd_weight, temperature)
        t_model, t_params = teacher
        opts = dataclasses.replace(opts, teacher_softcap=float(option(t_model.cfg, "final_softcap")))
        h_t, head_t = jax.lax.stop_gradient(t_model.apply({"params": t_params}, inputs, return_hidden=True))
        h_s, head_s = student.apply({"params": params}, inputs, return_hidden=True)
        return chunked_loss(h_s, head_s, targets, mask, opts, h_t, head_t, kd_weight, temperature)

    def aligned(self, student, params, batch, teacher, kd_weight, temperature) -> dict:
        """The cross-tokenizer sums from hidden states, one chunk of logits at a time, never a [batch, seq, vocab]
        array: the teacher's target log-probs (salt_jax.kd.chunked_loss.target_logprobs), the student's loss
        with its gradient formed in the pass (salt_jax.kd.chunked_loss.aligned_chunked_loss)."""
        inputs, targets, mask = losses.split_tokens(batch.tokens, self.pad_id)
        tau = self.opts.temperature if temperature is None else temperature  # (a Python 1: one softmax)
        if not isinstance(teacher, alm.ChunkTargets):
            t_model, t_params = teacher
            h_t, head_t = jax.lax.stop_gradient(t_model.apply({"params": t_params}, batch.teacher_tokens[:, :-1],
                                                              return_hidden=True))
            logp1, logp, _ = target_logprobs(h_t, head_t, batch.teacher_tokens[:, 1:], tau, self.opts,
                                             float(option(t_model.cfg, "final_softcap")))
            teacher = alm.teacher_chunks(logp1, logp, batch.teacher_chunks, targets.shape[1])
        h_s, head_s = student.apply({"params": params}, inputs, return_hidden=True)
        opts = dataclasses.replace(self.opts, student_softcap=float(option(student.cfg, "final_softcap")))
        return aligned_chunked_loss(h_s, head_s, targets, mask, batch.student_chunks, teacher, kd_weight, tau, opts,
                                    MAX_CHUNK)


def chunked_options(config: ml_collections.ConfigDict) -> LossOptions:
    """LossOptions from a run config (train.loss_chunk, model.dtype and the salt.* KD fields)."""
    salt = config.salt
    return LossOptions(chunk=int(config.train.loss_chunk), temperature=float(salt.temperature),
                       kd_loss=salt.kd_loss, kd_topk=int(salt.kd_topk), token_select=salt.token_select,
                       token_select_k=int(salt.token_select_k),
                       token_select_threshold=float(salt.token_select_threshold), dtype=dtype_of(config.model.dtype),
                       sparse=salt.cache_targets, alm_temperature=float(salt.alm_temperature))


LOSSES = ("dense", "chunked")  # config.train.loss: DenseLoss (the reference) or ChunkedLoss


def make_loss(config: ml_collections.ConfigDict, pad_id: int = 0) -> DenseLoss | ChunkedLoss:
    """The objective config.train.loss names (one of LOSSES): dense (the reference) or chunked; `pad_id`: the
    student's padding id (the cross-tokenizer path reads its mask from the aligned batch)."""
    if config.train.loss == "chunked":
        return ChunkedLoss(chunked_options(config), pad_id)
    return DenseLoss(config.salt, pad_id)
