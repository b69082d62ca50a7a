"""Corpus file formats, chosen by a file's extension: how its bytes become records.

    .jsonl .json                      JSON lines: one record per line, its text in config.data.text_field
    .jsonl.gz .json.gz                the same, gzip-compressed (Dolma)
    .jsonl.zst .jsonl.zstd .json.zst  the same, zstd-compressed (the Pile)
    .parquet                          Parquet: the text_field column, read one row group at a time
    anything else (.txt, .py, .md)    one document per file; also compressed (.txt.gz, .txt.zst)

A plain JSONL file can be read from any byte (a line's start is found where
reading begins) and a Parquet file from any row group, but a compressed stream
only from its start: the token store cuts its tasks accordingly
(salt_jax.data.files). Every concatenated gzip member or zstd frame is read.
zstandard and pyarrow are imported only when such a file is read. A truncated
or corrupt compressed stream raises `DamagedStream` (the readers name the file
and the offset); a Parquet file that cannot be read, or lacks the text column,
is a UserError naming it.
"""

from __future__ import annotations

import io
import os
import zlib
from typing import Iterator

from salt_jax import paths
from salt_jax.data.documents import as_text
from salt_jax.errors import UserError

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
LINES = (".jsonl", ".json")
_CHUNK = 1 << 16  # compressed bytes decoded at a time (a few hundred KB of text)


class DamagedStream(Exception):
    """A compressed stream that ends mid-way or holds data its decoder rejects."""


def compression(path: str) -> str | None:
    """"gzip", "zstd", or None for an uncompressed file."""
    return COMPRESSIONS.get(os.path.splitext(path)[1])


def stem(path: str) -> str:
    """The path without its compression suffix (a.jsonl.zst -> a.jsonl): what the file holds."""
    return os.path.splitext(path)[0] if compression(path) else path


def kind(path: str) -> str:
    """How a file is read: "lines" (JSON lines, maybe compressed), "parquet", or "whole" (one document)."""
    inner = stem(path)
    if inner.endswith(LINES):
        return "lines"
    if inner.endswith(".parquet") and not compression(path):
        return "parquet"
    return "whole"


def is_extended(path: str) -> bool:
    """Whether a file is read differently since the formats were added: compressed, .json (one document
    before, JSON lines now), or Parquet. Stores of such files are keyed apart (FileSource.fingerprint)."""
    return bool(compression(path)) or kind(path) == "parquet" or path.endswith(".json")


class _Decompressed(io.RawIOBase):
    """The decompressed bytes of a gzip or zstd stream, across concatenated members / frames, read in
    bounded chunks; a stream that stops inside a member or frame raises DamagedStream."""

    def __init__(self, fh, method: str):
        self._fh, self._method = fh, method
        if method == "zstd":
            import zstandard  # noqa: PLC0415 -- only when a .zst file is read

            # 2 GiB windows: files compressed with `zstd --long=31` (memory is taken only as a frame needs it)
            self._zstd = zstandard.ZstdDecompressor(max_window_size=2**31)
            self._errors = (zstandard.ZstdError,)
        else:
            self._errors = (zlib.error,)
        self._decoder = None
        self._out, self._at = b"", 0  # decoded, and how much of it was read
        self._pending = b""  # compressed bytes past the end of the last member
        self._eof = False
        self.consumed = 0  # compressed bytes read from the file (a task's progress)

    def readable(self) -> bool:
        return True

    def _new_decoder(self):
        return self._zstd.decompressobj() if self._method == "zstd" else zlib.decompressobj(16 + zlib.MAX_WBITS)

    def _fill(self) -> None:
        data, self._pending = self._pending, b""
        if not data:
            data = self._fh.read(_CHUNK)
            self.consumed += len(data)
        if not data:
            if self._decoder is not None:
                raise DamagedStream(f"the {self._method} stream ends inside a member (a truncated file)")
            self._eof = True
            return
        if self._decoder is None:
            if self._method == "gzip":
                data = data.lstrip(b"\0")  # zero padding after a member, as gzip(1) accepts
                if not data:
                    return
            self._decoder = self._new_decoder()
        try:
            self._out, self._at = self._decoder.decompress(data), 0
        except self._errors as e:
            raise DamagedStream(f"corrupt {self._method} data ({e})") from None
        if self._decoder.eof:  # a member / frame ended: what follows is the next one
            self._pending, self._decoder = self._decoder.unused_data, None

    def readinto(self, buffer) -> int:
        while self._at >= len(self._out) and not self._eof:
            self._fill()
        n = min(len(buffer), len(self._out) - self._at)
        buffer[:n] = memoryview(self._out)[self._at:self._at + n]
        self._at += n
        return n


def decompressed(fh, path: str) -> io.BufferedReader:
    """`fh` (a binary file of `path`) decompressed, as a buffered binary stream (readline, read)."""
    return io.BufferedReader(_Decompressed(fh, compression(path)), 1 << 20)


def _pyarrow_errors() -> tuple:
    import pyarrow  # noqa: PLC0415 -- only when a Parquet file is read

    return (pyarrow.ArrowException, OSError, ValueError)


def _parquet_file(fh, path: str):
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        return pq.ParquetFile(fh)
    except _pyarrow_errors() as e:
        why = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path}: not a readable Parquet file ({why}); re-download it or remove it") from None


def parquet_layout(path: str, field: str) -> list[tuple[int, int]]:
    """(rows, uncompressed bytes of the `field` column) of each row group, from the file's footer alone."""
    with paths.open(path, "rb") as fh:
        meta = _parquet_file(fh, path).metadata
        leaves = [meta.schema.column(j).path for j in range(meta.num_columns)]
        if field not in leaves:
            raise UserError(f"{path}: no column {field!r} (its columns: {', '.join(leaves)}); set "
                            "config.data.text_field to the column holding the text")
        j = leaves.index(field)
        return [(meta.row_group(g).num_rows, meta.row_group(g).column(j).total_uncompressed_size)
                for g in range(meta.num_row_groups)]


def parquet_values(path: str, groups: range, field: str, first_row: int | None = None,
                   batch_rows: int = 1024) -> Iterator[tuple[int, object]]:
    """(row index in the file, text) of the rows of row groups `groups` from `first_row` on, reading only the
    `field` column, one row group (in batches of `batch_rows`) at a time. A value that is not text (null, a
    number) comes as it is (the reader counts and skips it); bytes that are not UTF-8 as UNDECODABLE."""
    errors = _pyarrow_errors()
    with paths.open(path, "rb") as fh:
        pf = _parquet_file(fh, path)
        meta = pf.metadata
        row = sum(meta.row_group(g).num_rows for g in range(groups.start))
        for g in groups:
            n = meta.row_group(g).num_rows
            if first_row is not None and row + n <= first_row:
                row += n
                continue
            try:
                batches = pf.iter_batches(batch_size=batch_rows, row_groups=[g], columns=[field], use_threads=False)
                for batch in batches:
                    for value in batch.column(0).to_pylist():
                        if first_row is None or row >= first_row:
                            yield row, as_text(value)
                        row += 1
            except errors as e:
                why = (str(e).splitlines() or [type(e).__name__])[0][:160]
                raise UserError(f"{path}: row group {g} is unreadable ({why}); re-download the file or remove "
                                "it") from None
