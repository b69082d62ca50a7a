"""A model on the mesh as a scoring and generation engine: the device side of evaluation.

`Engine.score` gives each row's log-likelihood of its marked target tokens
and whether every one of them is the greedy choice (what lm-eval's
`loglikelihood` needs). `Engine.score_shared` gives the same numbers for rows
that share a prefix (the choices of a multiple-choice question after their
common context): each prefix runs once, into a KV cache, and every row's own
tokens are scored against it. `Engine.generate` decodes with a KV cache
(greedy, or sampled with temperature / top-k / top-p), checking stop
conditions between chunks of tokens. Shapes are bucketed (rows to the batch
size, lengths to powers of two) so an evaluation compiles a handful of
programs. `tokens_run` counts the tokens the model has run (`positions_run`
the positions, padding included), so what a shared prefix saves is measured.

Several processes: process 0 decides what to compute; every other process
calls `serve()`, which runs each computation with it (inputs are broadcast
from process 0, outputs are replicated) until process 0 calls `close()`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from salt_jax.model import sharding
from salt_jax.model.transformer import Transformer, option, output_logits, softcap

_OPS = ("score", "prefill", "decode", "close", "score_cached")
_DTYPES = (np.int32, np.float32)
_HEADER = 2 + 6 * 5  # op, array count, then (ndim, 3 dims, dtype) per array


def suffix_length(n: int) -> int:
    """The padded length of rows scored after a shared prefix: a multiple of 8 up to 64 (choices are mostly a
    few tokens, and a power of two would pad them by up to half), then `bucket`'s lengths."""
    return max(8, -(-n // 8) * 8) if n <= 64 else bucket(n)


def bucket(n: int, lo: int = 16, hi: int | None = None) -> int:
    """A padded length >= n (at least `lo`, at most `hi`): powers of two up to 128, then quarter steps
    between them (160, 192, 224, 256, 320, ...), so at most 4 programs compile per doubling of length
    and padding wastes under 25% of a batch."""
    b = max(lo, 1 << max(n - 1, 0).bit_length())
    if b > 128:
        step = b // 8  # quarters of the octave (b/2, b]
        b = -(-n // step) * step
    return min(b, hi) if hi else b


def _logits(cfg, hidden: jax.Array, head: jax.Array) -> jax.Array:
    logits = output_logits(hidden, head)
    return softcap(logits, option(cfg, "final_softcap")) if option(cfg, "final_softcap") else logits


def pick(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Next tokens [b] from logits [b, V]: argmax when temperature is 0, else a sample at that temperature
    from the top_k most likely (0 = all) within top-p nucleus (1.0 = all). All arguments may be traced."""
    vocab = logits.shape[-1]
    greedy = jnp.argmax(logits, axis=-1)
    z = logits / jnp.maximum(temperature, 1e-6)
    ordered = jnp.sort(z, axis=-1)[:, ::-1]  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take(ordered, k - 1, axis=-1)[:, None]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted entry
    cut = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)  # nucleus' smallest
    z = jnp.where((z >= kth) & (z >= cut), z, -jnp.inf)
    sampled = jax.random.categorical(key, z, axis=-1)
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


class Engine:
    """Scoring and KV-cache generation for one model's parameters on a mesh.

    `batch_size` rows per program (a multiple of the mesh's data*fsdp; short
    batches are padded); `chunk`: tokens decoded between stop checks.
    """

    def __init__(self, cfg, params: Any, mesh, batch_size: int = 32, chunk: int = 16):
        rows = mesh.shape["data"] * mesh.shape["fsdp"]
        self.cfg, self.params, self.mesh, self.chunk = cfg, params, mesh, chunk
        self.batch_size = -(-max(batch_size, 1) // rows) * rows
        self.max_len = int(cfg.max_len)
        self.model = Transformer(cfg)
        self.decoder = Transformer(cfg, decode=True)
        self._rows = sharding.batch_sharding(mesh)
        self._whole = sharding.replicated(mesh)
        self._state = None  # after a prefill: ((cache, next logits, next positions) on the mesh, cache length)
        self._score_fn = jax.jit(self._score_impl, out_shardings=self._whole)
        self._score_cached_fn = jax.jit(self._score_cached_impl, out_shardings=self._whole)
        # What the model has run, counted alike on every process: tokens (padding left out) and positions
        # (rows x length of every program, padding included). Sharing a context is measured with them.
        self.tokens_run = 0
        self.positions_run = 0

    # ------------------------------------------------------------------ processes
    def _send(self, op: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Process 0: tells the other processes what to run next (no-op with one process)."""
        if jax.process_count() == 1:
            return arrays
        from jax.experimental import multihost_utils

        header = np.zeros(_HEADER, np.int32)
        header[0], header[1] = _OPS.index(op), len(arrays)
        for i, a in enumerate(arrays):
            shape = list(a.shape) + [1] * (3 - a.ndim)
            header[2 + 5 * i: 7 + 5 * i] = [a.ndim, *shape, _DTYPES.index(a.dtype.type)]
        multihost_utils.broadcast_one_to_all(header)
        return [np.asarray(multihost_utils.broadcast_one_to_all(a)) for a in arrays]

    def serve(self) -> None:
        """Processes other than 0: run what process 0 sends until it calls `close()`."""
        from jax.experimental import multihost_utils

        while True:
            header = np.asarray(multihost_utils.broadcast_one_to_all(np.zeros(_HEADER, np.int32)))
            op = _OPS[int(header[0])]
            arrays = []
            for i in range(int(header[1])):
                ndim, d0, d1, d2, dt = (int(x) for x in header[2 + 5 * i: 7 + 5 * i])
                empty = np.zeros((d0, d1, d2)[:ndim], _DTYPES[dt])
                arrays.append(np.asarray(multihost_utils.broadcast_one_to_all(empty)))
            if op == "close":
                return
            getattr(self, f"_{op}")(*arrays)

    def close(self) -> None:
        """Process 0: releases the serving processes (call once, when evaluation is over)."""
        if jax.process_index() == 0:
            self._send("close", [])

    def _global(self, host: np.ndarray) -> jax.Array:
        """A host array every process holds whole, as a global array split by rows."""
        spec = self._rows if host.ndim == 2 else NamedSharding(self.mesh, P(sharding.BATCH_AXES))
        return jax.make_array_from_callback(host.shape, spec, lambda idx: host[idx])

    def _count(self, positions: np.ndarray) -> None:
        """Counts a program's tokens (positions >= 0; negative ones are padding) and positions."""
        self.tokens_run += int(np.sum(positions >= 0))
        self.positions_run += positions.size

    def _pad_rows(self, a: np.ndarray, fill) -> np.ndarray:
        n = -(-len(a) // self.batch_size) * self.batch_size
        return np.concatenate([a, np.full((n - len(a),) + a.shape[1:], fill, a.dtype)]) if n > len(a) else a

    # ------------------------------------------------------------------ scoring
    def _target_logprobs(self, hidden, head, targets, weights):
        """log p(target) [b, t] where weights is 1 (0 elsewhere), and per row whether each such target is the
        argmax. Logits are made in chunks of at most 128 positions: [b, c, V] at a time, never [b, t, V].
        The host sums a row in float64, so its total does not depend on how its positions were laid out
        (a whole window, or a row after a cached prefix)."""
        b, t, d = hidden.shape
        c = next((c for c in (128, 64, 32, 16) if t % c == 0), t)

        def one(args):
            h, tgt, w = args
            logits = _logits(self.cfg, h, head)
            lp = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)
            greedy = (jnp.argmax(logits, axis=-1) == tgt) | (w == 0)
            return lp * w, jnp.all(greedy, axis=-1)

        split = lambda x: x.reshape(b, t // c, c, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731
        lps, greedy = jax.lax.map(one, (split(hidden), split(targets), split(weights)))
        return lps.swapaxes(0, 1).reshape(b, t), jnp.all(greedy, axis=0)

    def _score_impl(self, params, tokens, targets, weights):
        hidden, head = self.model.apply({"params": params}, tokens, return_hidden=True)
        return self._target_logprobs(hidden, head, targets, weights)

    def _score(self, tokens, targets, weights):
        # A row's tokens are those up to its last scored position (the rest is padding, or runs for nothing).
        scored = weights > 0
        last = np.where(scored.any(axis=1), scored.shape[1] - np.argmax(scored[:, ::-1], axis=1), 0)
        self._count(np.where(np.arange(scored.shape[1]) < last[:, None], 0, -1))
        with sharding.on_mesh(self.mesh):
            out = self._score_fn(self.params, self._global(tokens), self._global(targets), self._global(weights))
        return [np.asarray(x) for x in jax.device_get(out)]

    def score(self, tokens: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row: sum of log p(targets[t] | tokens[:t+1]) where weights is 1, and whether each such target
        is the argmax. tokens / targets int32 [b, t], weights float32 [b, t]; t a multiple of 128 or a power
        of two (see `bucket`); rows are padded to the batch size here."""
        logprobs, greedy = self._score_rows(tokens, targets, weights)
        return logprobs.sum(axis=1), greedy.astype(bool)

    def token_logprobs(self, tokens: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """`score`'s program, per position: log p(targets[t] | tokens[:t+1]) [b, t] (float64; 0 where weights
        is 0), for measures over positions (salt_jax.eval.icl_probe). Same arguments as `score`."""
        return self._score_rows(tokens, targets, weights)[0]

    def _score_rows(self, tokens, targets, weights) -> tuple[np.ndarray, np.ndarray]:
        """(log-probabilities [b, t] in float64, greedy [b]) of `score`'s rows, padded to the batch size here."""
        n = len(tokens)
        arrays = [self._pad_rows(np.asarray(tokens, np.int32), 0), self._pad_rows(np.asarray(targets, np.int32), 0),
                  self._pad_rows(np.asarray(weights, np.float32), 0.0)]
        logprobs, greedy = self._score(*self._send("score", arrays))
        return logprobs[:n].astype(np.float64), greedy[:n]

    # ------------------------------------------------------------------ scoring after shared prefixes
    def score_shared(self, prefixes: list[list[int]], rows: list[tuple[int, list[int], list[int]]]
                     ) -> tuple[np.ndarray, np.ndarray]:
        """`score` for rows that continue a shared prefix, with each prefix run through the model once.

        rows[i] = (p, inputs, targets): the row's tokens are prefixes[p] + inputs; it gets the sum over j of
        log p(targets[j] | prefixes[p] + inputs[:j+1]) and whether every target is the argmax, the numbers
        `score` gives for the whole row. Each prefix is prefilled into a KV cache once (batch_size prefixes
        at a time, longest first, so a batch pads little) and only the rows' own tokens run after it: a
        4-choice question costs its context once, not four times. Prefixes are non-empty, inputs and
        targets of equal length, prefix + inputs at most max_len tokens."""
        members: list[list[int]] = [[] for _ in prefixes]
        for i, (p, _, _) in enumerate(rows):
            members[p].append(i)
        order = sorted(range(len(prefixes)), key=lambda p: (-len(prefixes[p]), p))
        logprobs, greedy = np.zeros(len(rows), np.float64), np.zeros(len(rows), bool)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            slot = {p: k for k, p in enumerate(batch)}
            picked = [i for p in batch for i in members[p]]
            lp, g = self._score_after([prefixes[p] for p in batch],
                                      [(slot[rows[i][0]], rows[i][1], rows[i][2]) for i in picked])
            logprobs[picked], greedy[picked] = lp, g
        return logprobs, greedy

    def _score_after(self, prefixes, rows) -> tuple[np.ndarray, np.ndarray]:
        """One prefill of at most batch_size prefixes, then its rows (prefix slot, inputs, targets) scored
        batch_size at a time against the cache, longest first, each batch padded to its own longest."""
        width = bucket(max(len(p) for p in prefixes), hi=self.max_len)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][1]))
        room = suffix_length(len(rows[order[0]][1]))
        tokens = np.zeros((self.batch_size, width), np.int32)
        positions = np.full((self.batch_size, width), -1, np.int32)  # -1: padding, seen by no query
        for k, p in enumerate(prefixes):
            tokens[k, :len(p)], positions[k, :len(p)] = p, np.arange(len(p))
        self._prefill(*self._send("prefill", [tokens, positions, np.array([width + room], np.int32)]))
        logprobs, greedy = np.zeros(len(rows), np.float64), np.zeros(len(rows), bool)
        for start in range(0, len(rows), self.batch_size):
            picked = order[start:start + self.batch_size]
            chunk = [rows[i] for i in picked]
            length = suffix_length(len(chunk[0][1]))
            lp, g = self._score_cached(*self._send("score_cached", self._row_arrays(prefixes, chunk, length)))
            logprobs[picked], greedy[picked] = lp[:len(chunk)].astype(np.float64).sum(axis=1), g[:len(chunk)]
        return logprobs, greedy

    def _row_arrays(self, prefixes, rows, room) -> list[np.ndarray]:
        """[tokens, positions, targets, weights] [batch_size, room] and the prefix slot of each row [batch_size]
        for `_score_cached`: a row's positions continue its prefix's; padding has position -1 and weight 0."""
        n = self.batch_size
        tokens, targets = np.zeros((n, room), np.int32), np.zeros((n, room), np.int32)
        positions, weights = np.full((n, room), -1, np.int32), np.zeros((n, room), np.float32)
        slots = np.zeros(n, np.int32)
        for i, (k, inputs, tgt) in enumerate(rows):
            m, at = len(inputs), len(prefixes[k])
            tokens[i, :m], targets[i, :m], weights[i, :m] = inputs, tgt, 1.0
            positions[i, :m], slots[i] = np.arange(at, at + m), k
        return [tokens, positions, targets, weights, slots]

    def _score_cached_impl(self, params, cache, tokens, positions, targets, weights, slots):
        """`_score_impl` for rows after the prefilled prefixes: row i attends over the cached keys and values
        of prefix slots[i] (gathered per row) and over its own tokens."""
        def per_row(path, leaf):  # [layers, rows, ...] leaves; "index" (the next free slot) is shared
            return leaf if getattr(path[-1], "key", "") == "index" else jnp.take(leaf, slots, axis=1)

        cache = jax.tree_util.tree_map_with_path(per_row, cache)
        (hidden, head), _ = self.decoder.apply({"params": params, "cache": cache}, tokens, positions,
                                               return_hidden=True, mutable=["cache"])
        return self._target_logprobs(hidden, head, targets, weights)

    def _score_cached(self, tokens, positions, targets, weights, slots):
        (cache, _, _), _ = self._state
        self._count(positions)
        with sharding.on_mesh(self.mesh):
            out = self._score_cached_fn(self.params, cache, *map(self._global, (tokens, positions, targets,
                                                                                weights, slots)))
        return [np.asarray(x) for x in jax.device_get(out)]

    # ------------------------------------------------------------------ generation
    def _cache_spec(self, path, leaf) -> NamedSharding:
        name = getattr(path[-1], "key", "")
        return self._whole if name == "index" else NamedSharding(self.mesh, P(None, sharding.BATCH_AXES))

    @functools.lru_cache(maxsize=None)
    def _programs(self, rows: int, length: int):
        """(prefill, decode) for a cache of `length` positions per row: explicit shardings, cache donated."""
        shapes = jax.eval_shape(lambda: self.decoder.init(jax.random.key(0), jnp.zeros((rows, length), jnp.int32),
                                                          jnp.zeros((rows, length), jnp.int32))["cache"])
        cache_specs = jax.tree_util.tree_map_with_path(self._cache_spec, shapes)
        specs = (cache_specs, self._rows, NamedSharding(self.mesh, P(sharding.BATCH_AXES)))

        def empty_cache():
            def one(path, s):
                return jnp.full(s.shape, -1 if getattr(path[-1], "key", "") == "pos" else 0, s.dtype)
            return jax.tree_util.tree_map_with_path(one, shapes)

        def prefill(params, tokens, positions):
            cache = jax.lax.with_sharding_constraint(empty_cache(), cache_specs)
            (hidden, head), state = self.decoder.apply({"params": params, "cache": cache}, tokens, positions,
                                                       return_hidden=True, mutable=["cache"])
            logits = _logits(self.cfg, hidden[:, -1:], head)[:, 0]
            return state["cache"], logits, jnp.max(positions, axis=-1) + 1

        def decode(params, cache, logits, positions, ints, floats):
            top_k, seed, start = ints[0], ints[1], ints[2]
            temperature, top_p = floats[0], floats[1]

            def body(carry, i):
                cache, logits, positions = carry
                token = pick(logits, jax.random.fold_in(jax.random.key(seed), start + i), temperature, top_k, top_p)
                (hidden, head), state = self.decoder.apply({"params": params, "cache": cache}, token[:, None],
                                                           positions[:, None], return_hidden=True, mutable=["cache"])
                return (state["cache"], _logits(self.cfg, hidden, head)[:, 0], positions + 1), token

            (cache, logits, positions), tokens = jax.lax.scan(body, (cache, logits, positions),
                                                              jnp.arange(self.chunk))
            return cache, logits, positions, tokens.T

        return (jax.jit(prefill, out_shardings=specs),
                jax.jit(decode, donate_argnums=(1,), out_shardings=specs + (self._whole,)))

    def _prefill(self, tokens, positions, length):
        prefill, _ = self._programs(tokens.shape[0], int(length[0]))
        self._count(positions)
        with sharding.on_mesh(self.mesh):
            self._state = (prefill(self.params, self._global(tokens), self._global(positions)), int(length[0]))

    def _decode(self, ints, floats):
        (cache, logits, positions), length = self._state
        _, decode = self._programs(logits.shape[0], length)
        self._count(np.zeros((logits.shape[0], self.chunk), np.int32))
        with sharding.on_mesh(self.mesh):
            cache, logits, positions, tokens = decode(self.params, cache, logits, positions, jnp.asarray(ints),
                                                      jnp.asarray(floats))
        self._state = ((cache, logits, positions), length)
        return np.asarray(jax.device_get(tokens))

    def generate(self, prompts: list[list[int]], max_new: int, *, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, eos_id: int | None = None,
                 stop: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
        """Up to `max_new` new tokens per prompt: greedy at temperature 0, else sampled (reproducible for a
        seed and batch). A row ends at `eos_id` (not returned) or when `stop(its new tokens)` is true,
        checked every `chunk` tokens (the caller trims what follows a stop string). Prompts are cut from
        the left to leave room in the model's context (max_len)."""
        out: list[list[int]] = []
        budget = max(self.max_len - max_new, 1)
        for start in range(0, len(prompts), self.batch_size):
            group = [list(p[-budget:]) or [0] for p in prompts[start:start + self.batch_size]]
            out += self._generate_batch(group, max_new, temperature, top_k, top_p, seed + start, eos_id, stop)
        return out

    def _generate_batch(self, prompts, max_new, temperature, top_k, top_p, seed, eos_id, stop):
        rows = self.batch_size
        width = bucket(max(len(p) for p in prompts))
        steps = -(-max_new // self.chunk) * self.chunk
        tokens = np.zeros((rows, width), np.int32)
        positions = np.full((rows, width), -1, np.int32)  # left padding: negative positions
        for i, p in enumerate(prompts):
            tokens[i, width - len(p):] = p
            positions[i, width - len(p):] = np.arange(len(p))
        self._prefill(*self._send("prefill", [tokens, positions, np.array([width + steps], np.int32)]))
        new = [[] for _ in prompts]
        done = [False] * len(prompts)
        for start in range(0, steps, self.chunk):
            ints = np.array([top_k, seed, start], np.int32)
            floats = np.array([temperature, top_p], np.float32)
            chunk = self._decode(*self._send("decode", [ints, floats]))
            for i in range(len(prompts)):
                if done[i]:
                    continue
                for t in chunk[i].tolist():
                    if (eos_id is not None and t == eos_id) or len(new[i]) >= max_new:
                        done[i] = True
                        break
                    new[i].append(t)
                done[i] = done[i] or len(new[i]) >= max_new or bool(stop and stop(new[i]))
            if all(done):
                break
        return new

