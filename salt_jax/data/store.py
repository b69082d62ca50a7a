"""The token store: each split of a source tokenized once into a memory-mapped stream on disk.

Documents are tokenized, each followed by EOS, concatenated in file order into
one token stream per split and written once to disk, keyed by (source,
tokenizer). Row i of a split is stream[i*L : i*L + L + 1] for sequence length
L (inputs are the first L tokens, targets the last L). A store is written into
a temporary directory and renamed when complete, so a half-written one is
never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time

import ml_collections
import numpy as np

from salt_jax.data import documents, sources, tokenizer
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
    source = sources.make_source(data_cfg)
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
        for split in documents.SPLITS:
            stats = documents.ReadStats()
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
