"""Token cache and step-indexed batches.

Documents are tokenized, each followed by EOS, concatenated in file order into
one token stream per split and written once to disk, keyed by (source,
tokenizer, sequence length). Row i of a split is stream[i*L : i*L + L + 1]
(inputs are the first L tokens, targets the last L).

The batch for step s is a pure function of (cache, seed, s): global example
index i = s*B + j maps to epoch i // n_rows and to position i % n_rows of that
epoch's permutation, seeded by (seed, epoch). Resuming needs only s, on any
number of hosts; each host reads only its own rows of the global batch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time

import jax
import ml_collections
import numpy as np

from salt_jax import corpus, tokenizer
from salt_jax.errors import UserError

CACHE_VERSION = 1


def default_cache_dir() -> str:
    return os.environ.get("SALT_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "salt_jax"))


class TokenSplit:
    """One split of the token cache: a read-only memory-mapped token stream."""

    def __init__(self, path: str, seq_len: int):
        try:
            self.stream = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable token cache ({e}); delete its directory to rebuild it") from None
        self.seq_len = seq_len
        self.n_rows = max((len(self.stream) - 1) // seq_len, 0)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows [len(idx), seq_len + 1] (int32) by row index."""
        L = self.seq_len
        out = np.empty((len(idx), L + 1), np.int32)
        for k, i in enumerate(idx):
            out[k] = self.stream[i * L:i * L + L + 1]
        return out


class TokenCache:
    """Train and held-out token streams of one (source, tokenizer, seq_len)."""

    def __init__(self, directory: str, seq_len: int):
        self.directory = directory
        with open(os.path.join(directory, "meta.json")) as fh:
            self.meta = json.load(fh)
        self.train = TokenSplit(os.path.join(directory, "train.npy"), seq_len)
        self.heldout = TokenSplit(os.path.join(directory, "heldout.npy"), seq_len)


def _write_split(docs, tok, path: str, chunk_docs: int = 256) -> int:
    """Tokenizes documents in chunks and writes the EOS-separated stream as .npy."""
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.int32
    parts, buf = [], []

    def flush():
        for ids in tok.encode(buf):
            parts.append(np.asarray(ids + [tok.eos_id], dtype))
        buf.clear()

    for doc in docs:
        buf.append(doc)
        if len(buf) >= chunk_docs:
            flush()
    flush()
    stream = np.concatenate(parts) if parts else np.zeros((0,), dtype)
    np.save(path, stream)
    return len(stream)


def build_cache(data_cfg: ml_collections.ConfigDict, cache_dir: str | None = None):
    """Returns (TokenCache, tokenizer), building and caching whatever is missing."""
    cache_dir = cache_dir or data_cfg.get("cache_dir") or default_cache_dir()
    source = corpus.make_source(data_cfg)
    tok = tokenizer.make_tokenizer(data_cfg.tokenizer, source, cache_dir)
    key = hashlib.sha256(f"v{CACHE_VERSION}:{source.fingerprint()}:{tok.fingerprint()}".encode()).hexdigest()[:16]
    directory = os.path.join(cache_dir, "tokens", key)
    if not os.path.exists(os.path.join(directory, "meta.json")):
        t0 = time.time()
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        tmp = f"{directory}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        meta = {"version": CACHE_VERSION, "source": data_cfg.source, "source_fingerprint": source.fingerprint(),
                "tokenizer": tok.fingerprint(), "vocab_size": tok.vocab_size, "splits": {}}
        for split in corpus.SPLITS:
            stats = corpus.ReadStats()
            n_tokens = _write_split(source.documents(split, stats), tok, os.path.join(tmp, f"{split}.npy"))
            meta["splits"][split] = dict(stats.as_dict(), tokens=n_tokens)
            logging.info("token cache %s: %d files, %d documents, %d tokens; skipped %d undecodable "
                         "and %d empty files", split, stats.files, stats.documents, n_tokens,
                         stats.skipped_undecodable, stats.skipped_empty)
        if meta["splits"]["train"]["documents"] == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"config.data: source {data_cfg.source!r} has no usable (UTF-8, non-empty) "
                            "training documents; check config.data.path")
        with open(os.path.join(tmp, "meta.json"), "w") as fh:
            json.dump(meta, fh, indent=1)
        try:
            os.replace(tmp, directory)  # atomic: a half-written cache is never picked up
        except OSError:  # another process finished the same cache first
            shutil.rmtree(tmp, ignore_errors=True)
        logging.info("token cache written to %s in %.1fs", directory, time.time() - t0)
    return TokenCache(directory, data_cfg.seq_len), tok


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(step: int, batch_size: int, n_rows: int, seed: int) -> np.ndarray:
    """Row indices of the global batch for `step`: a pure function of its arguments."""
    i = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, pos = i // n_rows, i % n_rows
    return np.array([_permutation(seed, int(e), n_rows)[p] for e, p in zip(epochs, pos)], np.int64)


def host_rows(global_batch: int) -> slice:
    """This process's contiguous slice of a global batch's rows."""
    n, p = jax.process_count(), jax.process_index()
    per = global_batch // n
    return slice(p * per, (p + 1) * per)


class Batches:
    """Step-indexed training batches of one split (or of a subset of its rows), sharded onto the mesh."""

    def __init__(self, split: TokenSplit, batch_size: int, seed: int, rows: np.ndarray | None = None):
        if split.n_rows < 1:
            raise UserError(f"config.data.seq_len={split.seq_len}: the training split has fewer tokens than "
                            "one sequence; lower seq_len or add data")
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        self.n_rows = split.n_rows if rows is None else len(self.rows)

    def indices(self, step: int) -> np.ndarray:
        """Row indices (into the split) of the global batch for `step`."""
        idx = batch_indices(step, self.batch_size, self.n_rows, self.seed)
        return idx if self.rows is None else self.rows[idx]

    def numpy(self, step: int) -> np.ndarray:
        """This host's rows of the global batch for `step`, [rows, seq_len + 1] int32."""
        return self.split.rows(self.indices(step)[host_rows(self.batch_size)])

    def device(self, step: int, sharding) -> jax.Array:
        return jax.make_array_from_process_local_data(sharding, self.numpy(step),
                                                      (self.batch_size, self.split.seq_len + 1))


def eval_batches(split: TokenSplit, batch_size: int, max_batches: int, pad_id: int) -> list[np.ndarray]:
    """The held-out set in order, as full batches (the last padded with pad rows, which are masked)."""
    n = split.n_rows if max_batches <= 0 else min(split.n_rows, max_batches * batch_size)
    if n == 0:
        raise UserError(f"config.data: the held-out split has fewer tokens than one sequence of "
                        f"{split.seq_len}; raise config.data.heldout_fraction or lower config.data.seq_len")
    rows = split.rows(np.arange(n))
    n_batches = -(-n // batch_size)
    padded = np.full((n_batches * batch_size, split.seq_len + 1), pad_id, np.int32)
    padded[:n] = rows
    return [padded[b * batch_size:(b + 1) * batch_size][host_rows(batch_size)] for b in range(n_batches)]
