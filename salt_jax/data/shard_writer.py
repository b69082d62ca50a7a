"""The token store's tasks: documents tokenized into one shard file, or a compressed stream into pieces.

What a store worker runs (salt_jax.data.store plans the tasks; an engine runs
them, in this process, in spawned processes or as Ray tasks). A shard is one
raw little-endian file of token ids, each document followed by EOS, written
atomically; a task's record (`<shard>.json`: what it read, its token count)
is written after it and marks it done.
"""

from __future__ import annotations

import itertools
import os
from typing import Callable, Iterable, Iterator

import numpy as np

from salt_jax import paths
from salt_jax.data import documents


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else int32 (little-endian on disk)."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<i4")


def chunks(docs: Iterator[str], shard_chars: int) -> Iterator[list[str]]:
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
_WORKER_SOURCE = None


def init_worker(tok, source=None) -> None:
    """A store worker tokenizes on one thread: the worker processes are the parallelism."""
    global _WORKER_TOKENIZER, _WORKER_SOURCE
    if hasattr(tok, "threads"):
        tok.threads = 1
    _WORKER_TOKENIZER, _WORKER_SOURCE = tok, source


def write_shard(docs: Iterable[str], path: str, tok=None, batch_docs: int = 256) -> int:
    """Tokenizes `docs` (EOS after each) into the shard file `path`, atomically; returns its token count."""
    tok = tok if tok is not None else _WORKER_TOKENIZER
    dtype = token_dtype(tok.vocab_size)
    n = 0
    docs = iter(docs)
    with paths.writer(path) as fh:
        while batch := list(itertools.islice(docs, batch_docs)):
            for ids in tok.encode(batch):
                arr = np.asarray(ids + [tok.eos_id], dtype)
                fh.write(arr.tobytes())
                n += len(arr)
    return n


def write_task(parts: list, split: str, path: str, source=None, tok=None) -> dict:
    """Reads the documents of `parts` and writes them as the shard `path`, then its record `path`.json
    (what was read, and the token count): the record marks the task done."""
    source = source if source is not None else _WORKER_SOURCE
    stats = documents.ReadStats()
    tokens = write_shard(source.part_documents(parts, split, stats), path, tok)
    record = dict(stats.as_dict(), tokens=tokens)
    paths.write_json(f"{path}.json", record)
    return record


def piece_path(path: str) -> Callable[[int], str]:
    """The path of piece j of the task whose shard would be `path` (train-00042.bin -> train-00042-00007.bin)."""
    return lambda j: f"{path.removesuffix('.bin')}-{j:05d}.bin"


def write_pieces(parts: list, split: str, path: str, shard_chars: int, source=None, tok=None) -> dict:
    """A task that reads a compressed stream (readable only from its start, and maybe far larger than a
    shard): its documents are written as pieces of about `shard_chars` characters, `<task>-00000.bin`,
    `-00001.bin`, ..., each a shard with its record (what was read up to its end, the cursor there, and the input
    bytes read: the build's progress inside the file, salt_jax.data.store._Progress).
    A build killed inside the task resumes after its last finished piece: it decompresses up to the cursor
    again but tokenizes only what follows, and writes the pieces a clean build would have. The task's
    record `path`.json, listing the pieces, marks it done."""
    source = source if source is not None else _WORKER_SOURCE
    piece = piece_path(path)
    records = []
    while paths.exists(f"{piece(len(records))}.json"):  # finished by an earlier, interrupted build
        records.append(paths.read_json(f"{piece(len(records))}.json"))
    stats = documents.ReadStats.of(records[-1]) if records else documents.ReadStats()
    cursor = tuple(records[-1]["next"]) if records else (0, None)
    stream = source.read_from(parts, split, stats, cursor)
    while True:
        item = next(stream, None)
        if item is None and records:
            break

        def docs(item=item):
            nonlocal cursor
            chars = 0
            while item is not None:
                text, cursor = item
                yield text
                chars += len(text)
                if chars >= shard_chars:
                    return
                item = next(stream, None)

        tokens = write_shard(docs(), piece(len(records)), tok)
        records.append(dict(stats.as_dict(), tokens=tokens, next=list(cursor), input_bytes=stats.input_bytes))
        paths.write_json(f"{piece(len(records) - 1)}.json", records[-1])
        if item is None:  # a task without documents: one empty piece
            break
    shards = [{"file": os.path.basename(piece(j)), "tokens": int(r["tokens"])} for j, r in enumerate(records)]
    record = dict(stats.as_dict(), tokens=sum(s["tokens"] for s in shards), shards=shards)
    paths.write_json(f"{path}.json", record)
    return record
