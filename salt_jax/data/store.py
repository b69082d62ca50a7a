"""The token store: each split of a source tokenized once, as shards of one EOS-separated token stream.

Documents are tokenized, each followed by EOS, and concatenated in source
order into one token stream per split; the stream is cut into shards at
document boundaries (about `config.data.shard_chars` characters of text each)
and each shard is one raw little-endian file (`train-00003.bin`), listed with
its token count in `meta.json`. Row i of a split is stream[i*L : i*L + L + 1]
for sequence length L (inputs are the first L tokens, targets the last L); a
row may span two shards. Fixed-width raw shards (not ArrayRecord) because
rows are token ranges, not records: a row is a slice of a memory map, read
without decoding, on any host.

Building is streamed and parallel: the parent reads documents in order and
hands each shard's documents to one of `workers` single-threaded processes
(or tokenizes them itself when workers = 0), which tokenizes them and writes
the shard (temp file + rename, so a shard is whole or absent). At most
2 x workers shards are in flight, so memory does not grow with the corpus. One
process builds a store at a time (a lock file beside it); others wait for it. The shards go into `<key>.partial/`; a build that stops half-way
keeps its finished shards and the next build skips them. When every shard is
written, meta.json is added and the directory renamed to `<key>`, so a
half-built store is never read.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from typing import Iterator

import ml_collections
import numpy as np

from salt_jax.data import documents, sources, tokenizer
from salt_jax.errors import UserError

STORE_VERSION = 2  # 1: one .npy per split


def default_cache_dir() -> str:
    return os.environ.get("SALT_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "salt_jax"))


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else int32 (little-endian on disk)."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<i4")


class TokenSplit:
    """One split of the store: its shards memory-mapped, read as one token stream."""

    def __init__(self, directory: str, shards: list[dict], dtype: np.dtype, seq_len: int):
        self.parts, sizes = [], []
        for shard in shards:
            path = os.path.join(directory, shard["file"])
            want = int(shard["tokens"])
            try:
                size = os.path.getsize(path)
                if size != want * dtype.itemsize:
                    raise ValueError(f"{size} bytes, meta.json says {want} tokens of {dtype.itemsize} bytes")
                part = np.memmap(path, dtype, mode="r") if want else np.zeros((0,), dtype)
            except (OSError, ValueError) as e:
                raise UserError(f"{path}: unreadable token store shard ({e}); delete {directory} to rebuild "
                                "the store") from None
            self.parts.append(part)
            sizes.append(want)
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.n_tokens = int(self.offsets[-1])
        self.seq_len = seq_len
        self.n_rows = max((self.n_tokens - 1) // seq_len, 0)

    def tokens(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """stream[start:stop] as int32, across shard boundaries."""
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        out = np.empty((max(stop - start, 0),), np.int32)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pos, k = start, first
        while pos < stop:
            lo = pos - self.offsets[k]
            take = min(stop, self.offsets[k + 1]) - pos
            out[pos - start:pos - start + take] = self.parts[k][lo:lo + take]
            pos, k = pos + take, k + 1
        return out

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows [len(idx), seq_len + 1] (int32) by row index."""
        L = self.seq_len
        out = np.empty((len(idx), L + 1), np.int32)
        for k, i in enumerate(idx):
            out[k] = self.tokens(int(i) * L, int(i) * L + L + 1)
        return out


class TokenCache:
    """Train and held-out splits of one (source, tokenizer) store, read at sequence length `seq_len`.

    With `tokenizer` (a fingerprint) a store written with another tokenizer is refused.
    """

    def __init__(self, directory: str, seq_len: int, tokenizer: str | None = None):
        self.directory = directory
        try:
            with open(os.path.join(directory, "meta.json")) as fh:
                self.meta = json.load(fh)
            dtype = np.dtype(self.meta["dtype"])
            splits = {s: self.meta["splits"][s]["shards"] for s in documents.SPLITS}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{os.path.join(directory, 'meta.json')}: unreadable token store index "
                            f"({type(e).__name__}); delete {directory} to rebuild the store") from None
        if tokenizer is not None and self.meta.get("tokenizer") != tokenizer:  # copied in by hand, or tampered
            raise UserError(f"{directory}: the token store was built with tokenizer {self.meta.get('tokenizer')}, "
                            f"this run tokenizes with {tokenizer}; delete the directory to rebuild it")
        self.train = TokenSplit(directory, splits["train"], dtype, seq_len)
        self.heldout = TokenSplit(directory, splits["heldout"], dtype, seq_len)


def _chunks(docs: Iterator[str], shard_chars: int) -> Iterator[list[str]]:
    """Consecutive groups of documents of about `shard_chars` characters (a document is never split)."""
    group, size = [], 0
    for doc in docs:
        group.append(doc)
        size += len(doc)
        if size >= shard_chars:
            yield group
            group, size = [], 0
    if group:
        yield group


_WORKER_TOKENIZER = None


def _init_worker(tok) -> None:
    """A store worker tokenizes on one thread: the worker processes are the parallelism."""
    global _WORKER_TOKENIZER
    if hasattr(tok, "threads"):
        tok.threads = 1
    _WORKER_TOKENIZER = tok


def _write_shard(docs: list[str], path: str, tok=None, batch_docs: int = 256) -> int:
    """Tokenizes `docs` (EOS after each) into the shard file `path`, atomically; returns its token count."""
    tok = tok if tok is not None else _WORKER_TOKENIZER
    dtype = token_dtype(tok.vocab_size)
    tmp = f"{path}.tmp{os.getpid()}"
    n = 0
    with open(tmp, "wb") as fh:
        for i in range(0, len(docs), batch_docs):
            for ids in tok.encode(docs[i:i + batch_docs]):
                arr = np.asarray(ids + [tok.eos_id], dtype)
                fh.write(arr.tobytes())
                n += len(arr)
    os.replace(tmp, path)
    return n


class _Progress:
    """The build's progress line: documents, tokens, tokens/s and (when the source's size is known) ETA."""

    def __init__(self, split: str, total_chars: int | None, every_s: float = 10.0):
        self.split, self.total_chars, self.every_s = split, total_chars, every_s
        self.t0 = self.last = time.time()
        self.chars = self.tokens = self.docs = 0

    def update(self, docs: int, chars: int, tokens: int, final: bool = False) -> None:
        self.docs, self.chars, self.tokens = self.docs + docs, self.chars + chars, self.tokens + tokens
        now = time.time()
        if not final and now - self.last < self.every_s:
            return
        self.last = now
        rate = self.tokens / max(now - self.t0, 1e-9)
        eta = "?"
        if self.total_chars and self.chars:
            left = max(self.total_chars - self.chars, 0) * (now - self.t0) / self.chars
            eta = f"{left:.0f}s"
        logging.info("token store %s: %d documents, %d tokens, %.0f tokens/s, ETA %s", self.split, self.docs,
                     self.tokens, rate, "0s" if final else eta)


def _build_split(source, split: str, tok, partial: str, workers: int, shard_chars: int) -> dict:
    """Writes the shards of one split into `partial` (skipping finished ones); returns its meta entry."""
    stats = documents.ReadStats()
    progress = _Progress(split, getattr(source, "total_chars", lambda s: None)(split))
    shards: list[dict] = []
    pending: dict[int, tuple[concurrent.futures.Future, int, int]] = {}

    def record(index: int, n_docs: int, n_chars: int, n_tokens: int) -> None:
        shards[index]["tokens"] = n_tokens
        progress.update(n_docs, n_chars, n_tokens)

    pool = None
    if workers > 0:  # spawn: the parent may hold JAX's threads, which fork would copy half-initialised
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_init_worker, initargs=(tok,))
    try:
        for index, docs in enumerate(_chunks(source.documents(split, stats), shard_chars)):
            name = f"{split}-{index:05d}.bin"
            path = os.path.join(partial, name)
            shards.append({"file": name, "tokens": None})
            n_chars = sum(map(len, docs))
            if os.path.exists(path):  # finished by an earlier, interrupted build
                record(index, len(docs), n_chars, os.path.getsize(path) // token_dtype(tok.vocab_size).itemsize)
            elif pool is None:
                record(index, len(docs), n_chars, _write_shard(docs, path, tok))
            else:
                pending[index] = (pool.submit(_write_shard, docs, path), len(docs), n_chars)
                while len(pending) >= 2 * workers:  # bounded: at most 2 x workers shards of text in flight
                    _collect(pending, record)
        while pending:
            _collect(pending, record)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    progress.update(0, 0, 0, final=True)
    return dict(stats.as_dict(), tokens=int(sum(s["tokens"] for s in shards)), shards=shards)


def _collect(pending: dict, record) -> None:
    done, _ = concurrent.futures.wait([f for f, _, _ in pending.values()],
                                      return_when=concurrent.futures.FIRST_COMPLETED)
    for index in [i for i, (f, _, _) in pending.items() if f in done]:
        future, n_docs, n_chars = pending.pop(index)
        record(index, n_docs, n_chars, future.result())


def _partial_dir(directory: str, shard_chars: int) -> str:
    """`<store>.partial`, keeping the shards of an interrupted build with the same shard size (and no temp files)."""
    partial = f"{directory}.partial"
    build = {"shard_chars": shard_chars}
    try:
        with open(os.path.join(partial, "build.json")) as fh:
            if json.load(fh) != build:
                raise ValueError("other shard boundaries")
        for name in os.listdir(partial):
            if ".tmp" in name:  # a shard whose writer died mid-write
                os.remove(os.path.join(partial, name))
        logging.info("token store: resuming the build in %s", partial)
    except (OSError, ValueError):
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        with open(os.path.join(partial, "build.json"), "w") as fh:
            json.dump(build, fh)
    return partial


def store_key(source, tok) -> str:
    """The store's directory name: a hash of the source's and the tokenizer's fingerprints."""
    return hashlib.sha256(f"v{STORE_VERSION}:{source.fingerprint()}:{tok.fingerprint()}".encode()).hexdigest()[:16]


def _build(source, tok, data_cfg: ml_collections.ConfigDict, directory: str, workers: int) -> None:
    """Builds the store `directory` (under its lock): shards into `<directory>.partial`, then meta.json, then
    the rename."""
    t0 = time.time()
    partial = _partial_dir(directory, int(data_cfg.shard_chars))
    meta = {"version": STORE_VERSION, "source": data_cfg.source, "source_fingerprint": source.fingerprint(),
            "tokenizer": tok.fingerprint(), "vocab_size": tok.vocab_size,
            "dtype": token_dtype(tok.vocab_size).str, "splits": {}}
    for split in documents.SPLITS:
        info = _build_split(source, split, tok, partial, int(workers), int(data_cfg.shard_chars))
        meta["splits"][split] = info
        logging.info("token store %s: %d files, %d documents, %d tokens in %d shards; skipped %d undecodable "
                     "and %d empty files", split, info["files"], info["documents"], info["tokens"],
                     len(info["shards"]), info["skipped_undecodable"], info["skipped_empty"])
    if meta["splits"]["train"]["documents"] == 0:
        raise UserError(f"config.data: source {data_cfg.source!r} has no usable (UTF-8, non-empty) "
                        "training documents; check config.data.path")
    with open(os.path.join(partial, "meta.json.tmp"), "w") as fh:
        json.dump(meta, fh, indent=1)
    os.replace(os.path.join(partial, "meta.json.tmp"), os.path.join(partial, "meta.json"))
    os.replace(partial, directory)  # atomic: a half-built store is never picked up
    logging.info("token store written to %s in %.1fs", directory, time.time() - t0)


def build_cache(data_cfg: ml_collections.ConfigDict, cache_dir: str | None = None, workers: int = 0):
    """Returns (TokenCache, tokenizer), building and caching whatever is missing.

    `workers` = 0 tokenizes in this process (with the tokenizer's own threads);
    N > 0 in N single-threaded processes (python -m salt_jax.prepare --workers=N).
    """
    cache_dir = cache_dir or data_cfg.cache_dir or default_cache_dir()
    source = sources.make_source(data_cfg)
    tok = tokenizer.make_tokenizer(data_cfg.tokenizer, source, cache_dir)
    directory = os.path.join(cache_dir, "tokens", store_key(source, tok))
    if not os.path.exists(os.path.join(directory, "meta.json")):
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        with open(f"{directory}.lock", "w") as lock:  # one builder per store; others wait, then open it
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logging.info("token store %s: another process is building it; waiting", directory)
                fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(os.path.join(directory, "meta.json")):
                _build(source, tok, data_cfg, directory, workers)
    return TokenCache(directory, data_cfg.seq_len, tok.fingerprint()), tok
