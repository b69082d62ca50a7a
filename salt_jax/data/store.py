"""The token store: each split of a source tokenized once, as shards of one EOS-separated token stream.

Documents are tokenized, each followed by EOS, and concatenated in source
order into one token stream per split; the stream is cut into shards at
document boundaries (about `config.data.shard_chars` bytes or characters of text each)
and each shard is one raw little-endian file (`train-00003.bin`), listed with
its token count in `meta.json`. Row i of a split is stream[i*L : i*L + L + 1]
for sequence length L (inputs are the first L tokens, targets the last L); a
row may span two shards. Fixed-width raw shards (not ArrayRecord) because
rows are token ranges, not records: a row is a slice of a memory map, read
without decoding, on any host.

Building is parallel and streamed. A file source (stdlib, text: plain, JSONL,
compressed, Parquet) is cut into tasks before anything is read, from the
files' sizes (and Parquet footers) alone: consecutive files packed to about
`shard_chars` bytes, JSONL files cut into byte ranges (a record belongs to the
range its line starts in), Parquet files into runs of row groups. Each task is
read and tokenized by one of `workers` single-threaded processes (or by this
process when workers = 0), so reading is parallel too, and is one shard; a
task that reads a compressed stream (a whole file, maybe of many GB) is
written as pieces of about `shard_chars` characters, each a shard with its
record, so a killed build loses at most about one piece of work. A dataset
source (TFDS, seqio, ArrayRecord, Hugging Face) is a stream: this process
reads it in order and hands each shard's documents to a worker. A shard is
whole or absent (temp file + rename, or one object upload); a task's record
(`<shard>.json`: what it read, its token count, its pieces) is written after
it and marks it done. At most 2 x workers tasks are in flight, so memory does
not grow with the corpus.
Where the tasks run is the engine's business (engines.py): spawned processes
on this machine, or Ray tasks on a local Ray or a cluster (ray_engine.py).

A local store is built by one process at a time (a lock file beside it;
others wait, then open it) into `<key>.partial/`, renamed to `<key>` once
meta.json is written, so a half-built store is never read. A build that stops
half-way keeps its finished shards and the next build skips them.

A shared store (a gs:// or s3:// cache_dir, or config.data.shared_cache for a
file system every host mounts) is built by all the run's hosts together: host
p of P writes tasks p, p + P, p + 2P, ... (of a file source it reads only
those tasks' files; a dataset stream every host reads whole), and host 0
writes meta.json once every task is done. meta.json is the commit marker
(object stores have no rename); the other hosts wait for it. The paths go
through `salt_jax.paths` (etils.epath for URIs).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import threading
import time
from typing import Any, Callable, Protocol, runtime_checkable

import ml_collections
import numpy as np

from salt_jax import paths
from salt_jax.data import documents, engines, mixture, shard_writer, sources, tokenizer
from salt_jax.data.shard_writer import token_dtype
from salt_jax.errors import UserError

STORE_VERSION = 2  # 1: one .npy per split


def default_cache_dir() -> str:
    return os.environ.get("SALT_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "salt_jax"))


def is_shared(data_cfg: ml_collections.ConfigDict, cache_dir: str) -> bool:
    """Whether every host sees this cache directory (and so the hosts build one store together)."""
    return paths.is_remote(cache_dir) or bool(data_cfg.shared_cache)


_READERS = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="salt_jax-store-read")


class TokenSplit:
    """One split of the store: its shards memory-mapped, read as one token stream."""

    def __init__(self, directory: str, shards: list[dict], dtype: np.dtype, seq_len: int, vocab_size: int):
        self.directory, self.vocab_size = directory, vocab_size
        self.parts, sizes = [], []
        for shard in shards:
            path = paths.join(directory, shard["file"])
            want = int(shard["tokens"])
            try:
                size = paths.getsize(path)
                if size != want * dtype.itemsize:
                    raise ValueError(f"{size} bytes, meta.json says {want} tokens of {dtype.itemsize} bytes")
                part = paths.ArrayFile(path, dtype, want)
            except (OSError, ValueError) as e:
                raise UserError(f"{path}: unreadable token store shard ({e}); delete {directory} to rebuild "
                                "the store") from None
            self.parts.append(part)
            sizes.append(want)
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.n_tokens = int(self.offsets[-1])
        self.seq_len = seq_len
        self.n_rows = max((self.n_tokens - 1) // seq_len, 0)
        self.remote = paths.is_remote(directory)

    def tokens(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """stream[start:stop] as int32, across shard boundaries."""
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        out = np.empty((max(stop - start, 0),), np.int32)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pos, k = start, first
        while pos < stop:
            lo = pos - self.offsets[k]
            take = min(stop, self.offsets[k + 1]) - pos
            chunk = self.parts[k][lo:lo + take]
            if take and chunk.max() >= self.vocab_size:  # a damaged shard would otherwise train on NaN
                raise UserError(f"{self.parts[k].path}: token id {int(chunk.max())} is outside the vocabulary "
                                f"({self.vocab_size}) the store was built with: the shard is damaged; delete "
                                f"{self.directory} to rebuild the store")
            out[pos - start:pos - start + take] = chunk
            pos, k = pos + take, k + 1
        return out

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows [len(idx), seq_len + 1] (int32) by row index. A remote store's rows are read concurrently
        (one ranged read each, so the latency of an object store overlaps)."""
        L = self.seq_len
        out = np.empty((len(idx), L + 1), np.int32)

        def read(k: int) -> None:
            out[k] = self.tokens(int(idx[k]) * L, int(idx[k]) * L + L + 1)

        if self.remote and len(idx) > 1:
            list(_READERS.map(read, range(len(idx))))
        else:
            for k in range(len(idx)):
                read(k)
        return out


@runtime_checkable
class Store(Protocol):
    """What the rest of salt_jax reads of a token store, whichever kind: one corpus (TokenStore) or a mixture of
    corpora (salt_jax.data.mixture.MixtureStore). Callers ask these members, never which kind it is."""

    directory: str  # where what depends on its batches is kept (SALT_DS scores, the teacher cache)
    train: Any  # the training rows (TokenSplit, or a mixture's ConcatSplit): rows(idx), n_rows
    heldout: Any  # the held-out rows, all corpora together
    counts: np.ndarray | None  # a mixture's draw (each corpus's examples per PERIOD); None for one corpus

    @property
    def heldout_splits(self) -> dict[str, Any]:
        """The held-out split of each corpus, evaluated separately ({"": heldout} for one corpus)."""

    def mixture(self) -> dict[str, float] | None:
        """{corpus name: weight} of a mixture; None for one corpus."""

    def components(self) -> dict[str, "TokenStore"]:
        """The TokenStore of each corpus ({"": itself} for one corpus)."""

    def pool_rows(self, pool_size: int, seed: int) -> np.ndarray:
        """SALT_DS's pool: `pool_size` distinct training rows drawn with `seed` (sorted); pool_size <= 0: all."""


def pool_rows(n_rows: int, pool_size: int, seed: int) -> np.ndarray:
    """The pool: `pool_size` distinct train rows drawn with `seed` (sorted), or all rows if pool_size <= 0."""
    if pool_size <= 0:
        return np.arange(n_rows)
    if pool_size > n_rows:
        raise UserError(f"config.salt.ds_pool_size={pool_size} exceeds the {n_rows} training sequences; "
                        "lower it (or use 0 for the whole split)")
    return np.sort(np.random.default_rng([seed, 0x5A17]).choice(n_rows, pool_size, replace=False))


class TokenStore:
    """Train and held-out splits of one (source, tokenizer) store, read at sequence length `seq_len`.

    With `tokenizer` (a fingerprint) a store written with another tokenizer is refused. One corpus of the Store
    protocol: no mixture, its pool drawn uniformly.
    """

    counts = None  # (one corpus: no mixture draw)

    def __init__(self, directory: str, seq_len: int, tokenizer: str | None = None):
        self.directory = directory
        try:
            self.meta = paths.read_json(paths.join(directory, "meta.json"))
            dtype = np.dtype(self.meta["dtype"])
            vocab_size = int(self.meta["vocab_size"])
            splits = {s: self.meta["splits"][s]["shards"] for s in documents.SPLITS}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{paths.join(directory, 'meta.json')}: unreadable token store index "
                            f"({type(e).__name__}); delete {directory} to rebuild the store") from None
        if tokenizer is not None and self.meta.get("tokenizer") != tokenizer:  # copied in by hand, or tampered
            raise UserError(f"{directory}: the token store was built with tokenizer {self.meta.get('tokenizer')}, "
                            f"this run tokenizes with {tokenizer}; delete the directory to rebuild it")
        self.train = TokenSplit(directory, splits["train"], dtype, seq_len, vocab_size)
        self.heldout = TokenSplit(directory, splits["heldout"], dtype, seq_len, vocab_size)

    @property
    def heldout_splits(self) -> dict[str, TokenSplit]:
        return {"": self.heldout}

    def mixture(self) -> None:
        return None

    def components(self) -> dict[str, "TokenStore"]:
        return {"": self}

    def pool_rows(self, pool_size: int, seed: int) -> np.ndarray:
        return pool_rows(self.train.n_rows, pool_size, seed)


@dataclasses.dataclass
class _Count:
    """What part of a build read and wrote: documents, tokens, skipped records, and `work` (input bytes of a
    file source; characters of a stream)."""

    docs: int = 0
    tokens: int = 0
    skipped: int = 0
    work: int = 0

    def __add__(self, other: "_Count") -> "_Count":
        return _Count(*(getattr(self, f) + getattr(other, f) for f in ("docs", "tokens", "skipped", "work")))


def _count(record: dict, work: int) -> _Count:
    """A task's or a piece's record (shard_writer) as a _Count."""
    return _Count(int(record["documents"]), int(record["tokens"]), documents.ReadStats.of(record).records
                  - int(record["documents"]), work)


class _Progress:
    """The build's progress line, every `every_s` seconds from a thread (so it moves while a long task runs):
    documents, tokens, tokens/s, skipped records and, when the size of the input is known, ETA.

    Finished tasks count when they finish; a running task that reads a compressed stream counts up to its last
    finished piece (read from the piece records its worker writes, whatever engine runs it), so the line moves
    inside one large file too. What an earlier, interrupted build wrote (finished tasks and pieces) counts in
    the totals but not in this command's tokens/s or ETA.
    """

    def __init__(self, split: str, total: int | None, every_s: float = 10.0):
        self.split, self.total, self.every_s = split, total, every_s
        self.t0 = time.time()
        self.finished, self.earlier = _Count(), _Count()
        self.running: dict = {}  # key -> [piece path of index j, pieces seen, their _Count]
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True, name="salt_jax-store-progress")

    def __enter__(self) -> "_Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self.log(final=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()
            self.log()

    def done(self, key, count: _Count, earlier: bool = False) -> None:
        """A task or shard finished (`earlier`: by an earlier build, found done)."""
        with self._lock:
            self.running.pop(key, None)
            self.finished += count
            if earlier:
                self.earlier += count

    def started(self, key, piece: Callable[[int], str]) -> None:
        """A task that writes pieces (`piece(j)`: the path of its j-th) is handed out: the pieces an earlier
        build finished count as earlier work."""
        with self._lock:
            self.running[key] = [piece, 0, _Count()]
        self._read_pieces(key)
        with self._lock:
            if key in self.running:
                self.earlier += self.running[key][2]

    def poll(self) -> None:
        for key in list(self.running):
            self._read_pieces(key)

    def _read_pieces(self, key) -> None:
        """A running task's finished pieces: documents, skips and input bytes so far, tokens of each."""
        entry = self.running.get(key)
        if entry is None:
            return
        piece, seen, count = entry
        last, tokens = None, count.tokens
        try:
            while paths.exists(f"{piece(seen)}.json"):
                last = paths.read_json(f"{piece(seen)}.json")
                tokens += int(last["tokens"])
                seen += 1
        except (OSError, ValueError, KeyError):  # a record being written (object stores): read it next time
            pass
        if last is not None:  # documents, skips and input bytes are the task's so far; tokens the piece's own
            count = _count(dict(last, tokens=tokens), int(last.get("input_bytes", 0)))
            with self._lock:
                if key in self.running:
                    self.running[key] = [piece, seen, count]

    def log(self, final: bool = False) -> None:
        with self._lock:
            total = sum((entry[2] for entry in self.running.values()), self.finished)
            earlier = self.earlier
        elapsed = max(time.time() - self.t0, 1e-9)
        rate = (total.tokens - earlier.tokens) / elapsed  # this command's tokens over its own time
        eta = "0s" if final else "?"
        if not final and self.total and total.work > earlier.work:
            eta = f"{max(self.total - total.work, 0) * elapsed / (total.work - earlier.work):.0f}s"
        logging.info("token store %s: %d documents, %d tokens, %.0f tokens/s, ETA %s; %d records skipped",
                     self.split, total.docs, total.tokens, rate, eta, total.skipped)


def _split_entry(shards: list[dict], records: list[dict]) -> dict:
    """A split's meta.json entry: what was read (summed over the shards' records), tokens, shards."""
    total = documents.ReadStats()
    for r in records:
        total.add(documents.ReadStats.of(r))
    return dict(total.as_dict(), tokens=int(sum(s["tokens"] for s in shards)), shards=shards)


def _build_file_split(source, split: str, tok, build_dir: str, engine, shard_chars: int,
                      host: tuple[int, int]) -> dict | None:
    """A file source's split: each task (a group of file parts, `source.tasks`) is read and written by a
    worker, as one shard, or as pieces when it reads a compressed stream (`shard_writer.write_pieces`), so
    reading is parallel too and a host reads only its own tasks' files. Returns the split's meta entry on host 0
    (after the other hosts' tasks are done), None on the others."""
    tasks = source.tasks(split, shard_chars)
    names = [f"{split}-{i:05d}.bin" for i in range(len(tasks))]
    records: dict[int, dict] = {}
    sizes = [sum(p.size for p in parts) for parts in tasks]
    progress = _Progress(split, sum(sizes))

    def done(i: int, record: dict, earlier: bool = False) -> None:
        records[i] = record
        progress.done(i, _count(record, sizes[i]), earlier)

    def jobs():
        for i, parts in enumerate(tasks):
            path = paths.join(build_dir, names[i])
            if i % host[1] != host[0]:
                continue  # another host's task
            local = () if engine.workers else (source, tok)  # (in this process: no worker globals)
            if paths.exists(f"{path}.json"):  # finished by an earlier, interrupted build
                done(i, paths.read_json(f"{path}.json"), earlier=True)
            elif source.in_pieces(parts):
                progress.started(i, shard_writer.piece_path(path))
                yield i, shard_writer.write_pieces, (parts, split, path, shard_chars) + local
            else:
                yield i, shard_writer.write_task, (parts, split, path) + local

    with progress:
        engine.run(jobs(), done, (shard_writer.init_worker, (tok, source)))
    if host[0] != 0:
        return None
    records_of = lambda i: f"{paths.join(build_dir, names[i])}.json"  # noqa: E731
    missing = [i for i in range(len(tasks)) if i not in records]
    paths.wait_for(lambda: all(paths.exists(records_of(i)) for i in missing),
                   f"the other hosts' {len(missing)} {split} tasks in {build_dir}")
    for i in missing:
        records[i] = paths.read_json(records_of(i))
    shards = [shard for i in range(len(tasks))
              for shard in records[i].get("shards") or [{"file": names[i], "tokens": int(records[i]["tokens"])}]]
    return _split_entry(shards, [records[i] for i in range(len(tasks))])


def _build_stream_split(source, split: str, tok, build_dir: str, engine, shard_chars: int,
                        host: tuple[int, int]) -> dict | None:
    """A dataset source's split (TFDS, seqio, ArrayRecord: a stream of examples): this process reads the
    documents in order and hands each shard's documents to a worker; a host writes every H-th shard, but
    every host reads the whole stream. Returns the meta entry on host 0, None on the others."""
    stats = documents.ReadStats()
    progress = _Progress(split, None)  # (no ETA: a stream's size is not known)
    shards: list[dict] = []
    itemsize = token_dtype(tok.vocab_size).itemsize

    def done(key: tuple[int, int, int, int], tokens: int, earlier: bool = False) -> None:
        index, n_docs, n_chars, n_skipped = key  # (skipped: read by this process up to this shard's end)
        shards[index]["tokens"] = tokens
        progress.done(key, _Count(n_docs, tokens, n_skipped, n_chars), earlier)

    def jobs():
        for index, docs in enumerate(shard_writer.chunks(source.documents(split, stats), shard_chars)):
            name = f"{split}-{index:05d}.bin"
            path = paths.join(build_dir, name)
            shards.append({"file": name, "tokens": None})
            if index % host[1] != host[0]:
                continue  # another host's shard
            skipped = stats.records - stats.documents
            key = (index, len(docs), sum(map(len, docs)), skipped - counted[0])
            counted[0] = skipped
            if paths.exists(path):  # finished by an earlier, interrupted build
                done(key, paths.getsize(path) // itemsize, earlier=True)
            else:
                yield key, shard_writer.write_shard, (docs, path) + (() if engine.workers else (tok,))

    counted = [0]  # records skipped before the last shard handed out
    with progress:
        engine.run(jobs(), done, (shard_writer.init_worker, (tok, None)))
        progress.done(None, _Count(skipped=stats.records - stats.documents - counted[0]))  # after the last shard
    if host[0] != 0:
        return None
    missing = [s for s in shards if s["tokens"] is None]
    paths.wait_for(lambda: all(paths.exists(paths.join(build_dir, s["file"])) for s in missing),
                   f"the other hosts' {len(missing)} {split} shards in {build_dir}")
    for s in missing:
        s["tokens"] = paths.getsize(paths.join(build_dir, s["file"])) // itemsize
    return _split_entry(shards, [stats.as_dict()])


def _build_dir(directory: str, shard_chars: int, shared: bool, host: tuple[int, int]) -> str:
    """Where the shards are written, keeping those of an interrupted build with the same shard size.

    Local: `<store>.partial` (renamed to the store at the end). Shared: the store directory itself (its
    meta.json, written last, marks it complete); host 0 prepares it and the other hosts wait for that.
    """
    build_dir = directory if shared else f"{directory}.partial"
    build = {"shard_chars": shard_chars}
    marker = paths.join(build_dir, "build.json")
    if host[0] != 0:
        paths.wait_for(lambda: paths.exists(marker) and paths.read_json(marker) == build, f"{marker} from host 0")
        return build_dir
    try:
        if paths.read_json(marker) != build:
            raise ValueError("other shard boundaries")
        if not paths.is_remote(build_dir):
            for name in os.listdir(build_dir):
                if ".tmp" in name:  # a shard whose writer died mid-write
                    os.remove(os.path.join(build_dir, name))
        logging.info("token store: resuming the build in %s", build_dir)
    except (OSError, ValueError):
        paths.rmtree(build_dir)
        paths.makedirs(build_dir)
        paths.write_json(marker, build)
    return build_dir


def store_key(source, tok) -> str:
    """The store's directory name: a hash of the source's and the tokenizer's fingerprints."""
    return hashlib.sha256(f"v{STORE_VERSION}:{source.fingerprint()}:{tok.fingerprint()}".encode()).hexdigest()[:16]


def _build(source, tok, data_cfg: ml_collections.ConfigDict, directory: str, engine, shared: bool,
           host: tuple[int, int]) -> None:
    """Builds this host's part of the store `directory`; host 0 then completes it with meta.json."""
    t0 = time.time()
    shard_chars = int(data_cfg.shard_chars)
    build_dir = _build_dir(directory, shard_chars, shared, host)
    meta = {"version": STORE_VERSION, "source": data_cfg.source, "source_fingerprint": source.fingerprint(),
            "tokenizer": tok.fingerprint(), "vocab_size": tok.vocab_size,
            "dtype": token_dtype(tok.vocab_size).str, "splits": {}}
    build_split = _build_file_split if hasattr(source, "tasks") else _build_stream_split
    for split in documents.SPLITS:
        meta["splits"][split] = build_split(source, split, tok, build_dir, engine, shard_chars, host)
    meta_path = paths.join(directory, "meta.json")
    if host[0] != 0:
        paths.wait_for(lambda: paths.exists(meta_path), f"host 0 to complete {directory}")
        return
    for split, info in meta["splits"].items():
        skipped = ", ".join(f"{info['skipped'][cause]} {words}" for cause, words in documents.SKIPS.items())
        logging.info("token store %s: %d files, %d documents, %d tokens in %d shards; records skipped: %s", split,
                     info["files"], info["documents"], info["tokens"], len(info["shards"]), skipped)
    if meta["splits"]["train"]["documents"] == 0:
        raise UserError(f"config.data: source {data_cfg.source!r} has no usable (UTF-8, non-empty) "
                        "training documents; check config.data.path")
    paths.write_json(paths.join(build_dir, "meta.json"), meta)
    if not shared:
        if os.path.isdir(directory):  # a store whose meta.json was lost: this build replaces it
            logging.warning("token store %s had no meta.json; replaced by the store just built", directory)
            paths.rmtree(directory)
        os.replace(build_dir, directory)  # atomic: a half-built store is never picked up
    logging.info("token store written to %s in %.1fs", directory, time.time() - t0)


@contextlib.contextmanager
def _build_lock(directory: str, shared: bool):
    """One local builder per store (others wait, then open it). A shared store's hosts build it together."""
    if shared:
        yield
        return
    with open(f"{directory}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.info("token store %s: another process is building it; waiting", directory)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_store(data_cfg: ml_collections.ConfigDict, cache_dir: str | None = None, workers: int = 0,
                host: tuple[int, int] | None = None, engine=None):
    """Returns (TokenStore, tokenizer), building and caching whatever is missing.

    `workers` = 0 tokenizes in this process (with the tokenizer's own threads);
    N > 0 in N single-threaded processes (python -m salt_jax.prepare --workers=N).
    `engine` (engines.py; default: LocalEngine(workers)) runs the shards' tasks
    elsewhere instead, e.g. as Ray tasks (--engine=ray).
    `host` = (index, count) of the processes building a shared store together
    (default: JAX's process index and count); a local store ignores it.
    config.data.mixture: (salt_jax.data.mixture.MixtureStore, its one tokenizer), a store per corpus.
    """
    cache_dir = paths.expand(cache_dir or data_cfg.cache_dir or default_cache_dir())
    shared = is_shared(data_cfg, cache_dir)
    if shared and host is None:
        import jax  # noqa: PLC0415 -- the process topology, only when a run does not give it
        host = (jax.process_index(), jax.process_count())

    def open_store(source, tok, cfg: ml_collections.ConfigDict) -> TokenStore:
        directory = paths.join(cache_dir, "tokens", store_key(source, tok))
        if not paths.exists(paths.join(directory, "meta.json")):
            paths.makedirs(paths.join(cache_dir, "tokens"))
            with _build_lock(directory, shared):
                if not paths.exists(paths.join(directory, "meta.json")):
                    _build(source, tok, cfg, directory, engine or engines.LocalEngine(workers), shared,
                           host if shared else (0, 1))
        return TokenStore(directory, cfg.seq_len, tok.fingerprint())

    if data_cfg.get("mixture"):
        return mixture.build(data_cfg, cache_dir, not shared or host[0] == 0, open_store)
    source = sources.make_source(data_cfg)
    tok = tokenizer.make_tokenizer(data_cfg.tokenizer, source, cache_dir, train=not shared or host[0] == 0)
    return open_store(source, tok, data_cfg), tok
