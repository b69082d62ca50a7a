"""Approximate likelihood matching (ALM): KD across tokenizers, as pure functions of target log-probabilities.

Minixhofer, Vulić and Ponti, "Cross-Tokenizer Distillation via Approximate
Likelihood Matching" (NeurIPS 2025, arXiv 2503.20083; reference code: tokenkit).
Where the two tokenizations of a text agree on a boundary at both ends of a
span (a chunk: salt_jax.data.alignment), the probability each model gives the
span's text is the product of its tokens' probabilities there. ALM matches
those chunk likelihoods: per chunk c, with log-likelihoods
l_T(c) = sum of the teacher's target log-probs in c and l_S(c) the student's
(each from softmax(z / tau), tau the KD temperature and its schedule), the two
chunk probabilities at the binarisation temperature b (config.salt.alm_temperature),
p = exp(l / b), are read as Bernoulli variables and compared by a binarised
f-divergence, scaled by b:

    forward_kl:  b KL(Bern(p_T) || Bern(p_S)) = p_T (l_T - l_S) + b (1 - p_T) (log(1 - p_T) - log(1 - p_S))
    reverse_kl:  b KL(Bern(p_S) || Bern(p_T))

b = 100 (tokenkit's default) keeps p away from 0: a chunk of a few tokens has
a likelihood far below 1, and at b = 1 both Bernoullis sit near 0 with almost
no gradient between them. The factor b keeps the term's size: the binary KL
itself falls as 1/b (b KL -> l_T - l_S - l_T log(l_T / l_S) as b grows, an O(1)
number per chunk), as the same-tokenizer terms keep theirs by tau^2.

averaged over chunks and mixed as (1 - w) NTP + w ALM (`mixture_stats`).

Where this departs from the paper and tokenkit, and why:
- the divergence is the binary KL, not tokenkit's default binary cross-entropy: the
  same gradient (they differ by the teacher's binary entropy, a constant), and 0 when
  the chunk likelihoods agree, so the logged kd_loss reads as a divergence;
- no outcome-chunk debiasing (tokenkit's `unbiased` chunks, which also match
  the probability that a chunk ends where it does): it needs each
  tokenizer's space/pretokenization rules, and the paper reports the plain
  chunks close to it for same-script tokenizers;
- no hidden-state term: it needs a learned projection between the two
  models' widths, a second set of parameters for a phase that ends;
- chunk log-likelihoods are clipped to <= -1e-6 (log(1 - p) stays finite), as tokenkit does;
- the term is scaled by b, and not by tau^2 (the same-tokenizer terms are): tau enters through both
  models' log-probabilities, as in the paper; without b the term is ~1/b of a token-level KD term
  (tokenkit balances its losses by their gradient norms instead, GradMag): at b = 100 and w = 0.5 it
  gave the student almost nothing while halving its next-token term.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

KINDS = ("forward_kl", "reverse_kl")  # config.salt.kd_loss across tokenizers (topk_kl has no vocabulary to share)
EPS = 1e-6  # chunk log-likelihoods are clipped to <= -EPS


class ChunkTargets(NamedTuple):
    """The teacher's side of ALM for one batch: its log-likelihood of each chunk [B, C] at tau 1 and at the
    step's tau (what a cached teacher stores: two numbers per chunk, at most per student token)."""

    loglik1: jax.Array
    loglik: jax.Array


def teacher_chunks(logp1: jax.Array, logp: jax.Array, chunks: jax.Array, n: int) -> ChunkTargets:
    """The teacher's ChunkTargets from its target log-probs [B, U] (tau 1, tau) and their chunks [B, U]."""
    return ChunkTargets(chunk_sums(logp1, chunks, n), chunk_sums(logp, chunks, n))


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x < 0, stable at both ends (Mächler 2012)."""
    return jnp.where(x < -jnp.log(2.0), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def binary_kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(Bern(p) || Bern(q)) from log p and log q (each <= -EPS after clipping)."""
    log_p, log_q = jnp.minimum(log_p, -EPS), jnp.minimum(log_q, -EPS)
    p = jnp.exp(log_p)
    return p * (log_p - log_q) + (1.0 - p) * (log1mexp(log_p) - log1mexp(log_q))


def divergence(teacher: jax.Array, student: jax.Array, kind: str, binarize: float = 1.0) -> jax.Array:
    """The binarised divergence per chunk between chunk log-likelihoods (KINDS), at binarisation temperature
    `binarize` = b (each log-likelihood divided by it), times b: the binary KL falls as 1/b, and
    b KL -> l_T - l_S - l_T log(l_T / l_S) as b grows, so the term keeps its size (as the same-tokenizer
    terms are scaled by tau^2)."""
    teacher, student = teacher / binarize, student / binarize
    if kind == "forward_kl":
        return binarize * binary_kl(teacher, student)
    if kind == "reverse_kl":
        return binarize * binary_kl(student, teacher)
    raise ValueError(f"no ALM divergence {kind!r}; use one of {KINDS}")


def chunk_sums(values: jax.Array, chunks: jax.Array, n: int) -> jax.Array:
    """[B, n]: per row, the sum of `values` [B, L] over the positions of each chunk 0..n-1 (`chunks` [B, L],
    -1 outside every chunk)."""
    ids = jnp.where(chunks >= 0, chunks, n)
    return jax.vmap(lambda v, c: jax.ops.segment_sum(v, c, n + 1))(values.astype(jnp.float32), ids)[:, :n]


def target_logprobs(logits: jax.Array, targets: jax.Array, tau) -> tuple[jax.Array, jax.Array]:
    """(log softmax(z)[target], log softmax(z / tau)[target]) per position, float32, from full logits
    (z[target] - logsumexp(z): no [.., V] array of log-probs is kept; tau a Python 1: computed once)."""
    z = logits.astype(jnp.float32)
    z_y = jnp.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    logp1 = z_y - jax.nn.logsumexp(z, axis=-1)
    if isinstance(tau, (int, float)) and tau == 1:
        return logp1, logp1
    return logp1, z_y / tau - jax.nn.logsumexp(z / tau, axis=-1)


def mixture_stats(student: tuple[jax.Array, jax.Array], teacher: ChunkTargets, student_chunks: jax.Array,
                  mask: jax.Array, kd_weight: jax.Array, kind: str = "forward_kl",
                  binarize: float = 100.0) -> dict[str, jax.Array]:
    """The sums of one batch's loss (1 - w) NTP + w ALM, as salt_jax.kd.losses.mixture_stats returns them.

    student = (log-probs of its targets at tau 1, at tau) [B, T]; teacher = its chunk log-likelihoods
    (`teacher_chunks`, or read from the teacher cache); student_chunks [B, T] numbers the student's targets'
    chunks; mask [B, T] the student's real targets; kd_weight [B, T] w per position (constant in a row);
    kind and binarize: the divergence and its temperature (`divergence`).

    Sums: loss_sum = sum over tokens of (1 - w) NTP + (tokens / chunks) sum over chunks of w ALM, so
    loss_sum / tokens = mean NTP part + the chunk-mean ALM part; kd_sum is the ALM sum on the same scale
    (kd_sum / tokens = the mean ALM per chunk); teacher_ntp_sum the teacher's NLL on the aligned text, per
    student token (its NLL over the chunks times tokens / aligned tokens: comparable with ntp_sum, which the
    adaptive switch needs); aligned_tokens the student's targets inside chunks.
    """
    s_logp1, s_logp = student
    t_chunk1, t_chunk = teacher
    n = t_chunk.shape[1]
    m = mask.astype(jnp.float32)
    in_chunk = m * (student_chunks >= 0)
    l_s = chunk_sums(s_logp * in_chunk, student_chunks, n)
    count = chunk_sums(in_chunk, student_chunks, n)
    valid = (count > 0).astype(jnp.float32)
    w_chunk = chunk_sums(kd_weight * in_chunk, student_chunks, n) / jnp.maximum(count, 1.0)
    div = divergence(t_chunk, l_s, kind, binarize) * valid
    tokens, chunks, aligned = jnp.sum(m), jnp.sum(valid), jnp.sum(count)
    per_chunk = tokens / jnp.maximum(chunks, 1.0)  # (data only: no gradient flows through the counts)
    ntp = -s_logp1
    w = kd_weight * m
    return {
        "loss_sum": jnp.sum(m * ntp - w * ntp) + per_chunk * jnp.sum(w_chunk * div),
        "ntp_sum": jnp.sum(m * ntp),
        "kd_sum": per_chunk * jnp.sum(div),
        "kd_weight_sum": jnp.sum(w),
        "kd_tokens": jnp.sum(in_chunk * (kd_weight > 0)),
        "teacher_ntp_sum": -jnp.sum(t_chunk1 * valid) * tokens / jnp.maximum(aligned, 1.0),
        "aligned_tokens": aligned,
        "tokens": tokens,
    }
