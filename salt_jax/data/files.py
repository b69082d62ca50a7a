"""File sources: the built-in corpus (the Python standard library) and corpus files (text, JSONL, Parquet).

Both are a `FileSource`: one document per file, per JSON-lines record or per
Parquet row, the format chosen by the file's extension, compressed or not
(salt_jax.data.formats); one glob may mix them. The split is deterministic: a
whole-document file is held out when a hash of its path falls below
`heldout_fraction` (so adding or removing files never moves other files between
splits), a record when a hash of (file, position) does.

A bad record costs that record only, in every format: a file or record that is
not UTF-8, a JSON line that is not JSON or lacks the text field, a text that is
null, not a string or empty is skipped and counted by its cause
(documents.SKIPS). A wrong `text_field` still stops at once: a file whose first
FIELD_CHECK records (or all of them, when it has fewer) include none with the
field is a UserError naming it.

A file source can be read in parts (`tasks`): whole plain or compressed files,
byte ranges of JSONL files (a record belongs to the range its line starts in)
and row-group runs of Parquet files, so the token store's workers and hosts
each read only their own part of the corpus, and the parts concatenated in
order are exactly `documents(split)`. A part can also be read from a cursor
inside it (`read_from`): a compressed task resumes after its last written piece.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sysconfig
from typing import Iterator

import ml_collections

from salt_jax import paths
from salt_jax.data import formats
from salt_jax.data.documents import NO_FIELD, NOT_JSON, SPLITS, UNDECODABLE, Source, in_heldout
from salt_jax.errors import UserError

# A JSON-lines file whose first FIELD_CHECK records (or all of them, if fewer) have no text field stops the build:
# a wrong config.data.text_field, not a few bad records. Enough records to tell; few enough to tell at once.
FIELD_CHECK = 1000


def stdlib_root() -> str:
    """Directory of the running interpreter's standard library sources."""
    return sysconfig.get_paths()["stdlib"]


def _stdlib_files(root: str) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # site-packages holds installed third-party code, not the standard library.
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return files


def _text_files(patterns: str) -> list[str]:
    """The files named by comma-separated files, directories (read recursively) and glob patterns,
    local or URIs (gs://bucket/corpus/*.jsonl)."""
    files = []
    for pattern in [p.strip() for p in patterns.split(",") if p.strip()]:
        try:
            matches = paths.glob(pattern)
        except (OSError, ValueError) as e:
            raise UserError(f"config.data.path: cannot list {pattern!r} ({e})") from None
        if not matches:
            raise UserError(f"config.data.path: no file matches {pattern!r}; "
                            "give existing files, directories or glob patterns (comma-separated)")
        for m in matches:
            files.extend(paths.walk_files(m) if paths.isdir(m) else [m])
    return [paths.expand(f) for f in files if paths.is_remote(f) or os.path.isfile(f)]


def _common_root(files: list[str]) -> str:
    """The deepest directory holding every file (paths are split relative to it)."""
    if len(files) == 1:
        return files[0].rsplit("/", 1)[0] if paths.is_remote(files[0]) else os.path.dirname(files[0])
    if not paths.is_remote(files[0]):
        return os.path.commonpath(files)
    scheme = files[0].split("://", 1)[0] + "://"
    return scheme + os.path.commonpath([f.split("://", 1)[1] for f in files])


@dataclasses.dataclass(frozen=True)
class Part:
    """Units [start, stop) of one file: bytes of a plain file (whole) or of a JSONL file's lines, row groups
    of a Parquet file, or a whole compressed file (bytes [0, its size)); `size` is the bytes of input it
    covers (the build's progress)."""

    path: str
    start: int
    stop: int
    size: int


class FileSource(Source):
    """Documents from files: one document per file, one per JSON-lines record, or one per Parquet row
    (formats by extension: salt_jax.data.formats).

    Whole-document files are split by a hash of their path (without a compression suffix); JSON-lines and
    Parquet files are read by both splits and their records split by a hash of (path, byte offset of the
    line in the decompressed text) or (path, row), so a single file has a held-out part too, and
    compressing a JSONL file keeps its split.
    """

    VERSION = 2  # 2: JSONL records are split by their byte offset (1: by line number)
    FORMATS = 1  # keys stores holding compressed, .json or Parquet files (read by extension since formats 1)

    def __init__(self, kind: str, root: str, files: list[str], heldout_fraction: float,
                 text_field: str = "text", max_files: int = 0):
        self.kind, self.root, self.text_field, self.fraction = kind, root, text_field, heldout_fraction
        if max_files > 0:
            files = files[:max_files]
        self.files = {s: [] for s in SPLITS}
        self._sizes: dict[str, int] = {}
        self._layouts: dict[str, list[tuple[int, int]]] = {}
        for f in files:
            if formats.kind(f) != "whole":
                self.files["train"].append(f)
                self.files["heldout"].append(f)
            else:
                rel = os.path.relpath(formats.stem(f), root)
                self.files["heldout" if in_heldout(rel, heldout_fraction) else "train"].append(f)

    def fingerprint(self) -> str:
        """Identifies the files (paths and sizes) and the split; keys the caches."""
        every = [f for split in SPLITS for f in self.files[split]]
        version = f"v{self.VERSION}:" if any(f.endswith(".jsonl") for f in every) else ""  # other stores stay valid
        if any(formats.is_extended(f) for f in every):
            version += f"formats{self.FORMATS}:"
        h = hashlib.sha256(f"{version}{self.kind}:{self.text_field}:{self.fraction}".encode())
        for split in SPLITS:
            for f in self.files[split]:
                h.update(f"{split}:{os.path.relpath(f, self.root)}:{self.size(f)}\n".encode())
        return h.hexdigest()[:16]

    def size(self, path: str) -> int:
        if path not in self._sizes:
            self._sizes[path] = paths.getsize(path)
        return self._sizes[path]

    def _layout(self, path: str) -> list[tuple[int, int]]:
        """A Parquet file's (rows, text bytes) per row group, read from its footer once."""
        if path not in self._layouts:
            self._layouts[path] = formats.parquet_layout(path, self.text_field)
        return self._layouts[path]

    def _ranges(self, path: str, target_bytes: int) -> list[tuple[int, int, int]]:
        """(start, stop, bytes) of the units a file is cut into: byte ranges of a plain JSONL file, row groups
        of a Parquet file, else the whole file (a compressed stream is read from its start)."""
        n = self.size(path)
        kind = formats.kind(path)
        if kind == "lines" and not formats.compression(path):
            return [(start, min(start + target_bytes, n), min(start + target_bytes, n) - start)
                    for start in range(0, n, target_bytes)]
        if kind == "parquet":
            return [(g, g + 1, size) for g, (_, size) in enumerate(self._layout(path))]
        return [(0, n, n)]

    def tasks(self, split: str, target_bytes: int) -> list[list[Part]]:
        """The split's files as consecutive groups of about `target_bytes` of input (one task each): small
        files packed together, JSONL files cut into byte ranges, Parquet files into runs of row groups; a
        plain or compressed file is never split."""
        tasks, group, size = [], [], 0
        for f in self.files[split]:
            for start, stop, n in self._ranges(f, target_bytes):
                last = group[-1] if group else None
                if last and last.path == f and last.stop == start and formats.kind(f) == "parquet":
                    group[-1] = Part(f, last.start, stop, last.size + n)  # the next row group of the same run
                else:
                    group.append(Part(f, start, stop, n))
                size += n
                if size >= target_bytes:
                    tasks.append(group)
                    group, size = [], 0
        if group:
            tasks.append(group)
        return tasks

    @staticmethod
    def in_pieces(parts: list[Part]) -> bool:
        """Whether a task reads a compressed stream: the store writes it in resumable pieces."""
        return any(formats.compression(p.path) for p in parts)

    def part_documents(self, parts: list[Part], split: str, stats) -> Iterator[str]:
        """The documents of `parts` of `split`, counted in `stats` (a file counted in its first part)."""
        for text, _ in self.read_from(parts, split, stats):
            yield text

    def read_from(self, parts: list[Part], split: str, stats,
                  cursor: tuple[int, int | None] = (0, None)) -> Iterator[tuple[str, tuple[int, int]]]:
        """The documents of `parts` of `split` from `cursor` = (index of a part, where in it: a byte offset
        of its (decompressed) lines or a row; None = its start), each with the cursor just after it:
        reading again from there gives exactly the documents that follow (a resumed task)."""
        first, at_first = cursor
        before = sum(p.size for p in parts[:first])  # input bytes of the parts read before (stats.input_bytes)
        for k in range(first, len(parts)):
            part, at = parts[k], at_first if k == first else None
            if at is None and part.start == 0:
                stats.files += 1
            for text, after, read in self._part_texts(part, split, at):
                stats.input_bytes = before + read
                if stats.keep(text):
                    yield text, (k, after)
            before += part.size
            stats.input_bytes = before

    def _units(self, split: str) -> list[str]:
        return self.files[split]

    def _texts(self, path: str, split: str) -> Iterator:
        """Every document of one file of `split` (Source.documents)."""
        n = len(self._layout(path)) if formats.kind(path) == "parquet" else self.size(path)
        for text, _, _ in self._part_texts(Part(path, 0, n, n), split, None):
            yield text

    def _part_texts(self, part: Part, split: str, at: int | None) -> Iterator[tuple[object, int, int]]:
        """(text, position after it, input bytes of the part read so far) of the records of `part` in `split`,
        from position `at` (None = the part's start). Texts are as read: a str, a documents.Skip, or a value
        that is not text (null, a number); the reader (ReadStats.keep) counts and skips all but good text."""
        path = part.path
        try:
            if formats.kind(path) == "parquet":
                yield from self._rows(part, split, at)
            elif formats.kind(path) == "lines":
                yield from self._records(part, split, at)
            elif at is None:
                with paths.open(path, "rb") as fh:
                    data = formats.decompressed(fh, path).read() if formats.compression(path) else fh.read()
                try:
                    yield data.decode("utf-8"), part.stop, part.size
                except UnicodeDecodeError:
                    yield UNDECODABLE, part.stop, part.size
        except formats.DamagedStream as e:
            raise UserError(f"{path}: {e}; re-download the file or remove it") from None
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror or e}); fix its permissions or remove it") from None

    def _records(self, part: Part, split: str, at: int | None) -> Iterator[tuple[object, int, int]]:
        """The texts of `split` among the JSON-lines records whose line starts in [part.start, part.stop),
        streamed line by line (any file size in constant memory). Offsets are of the decompressed text. A
        line that is not UTF-8, not JSON or without the text field is yielded as its Skip (blank lines are
        not records). Read from the file's start, the first FIELD_CHECK records are checked for the field
        (`_FieldCheck`), whatever their split."""
        path, compressed = part.path, formats.compression(part.path)
        rel = os.path.relpath(formats.stem(path), self.root)
        where = " of its decompressed text" if compressed else ""
        check = _FieldCheck(path, self.text_field) if part.start == 0 and at is None else None
        with paths.open(path, "rb") as raw:
            fh = formats.decompressed(raw, path) if compressed else raw
            read = (lambda: fh.raw.consumed) if compressed else (lambda: min(pos, part.stop) - part.start)
            pos = part.start if at is None else at
            stop = None if compressed else part.stop
            try:
                if compressed:
                    _skip(fh, pos)  # a stream is only read from its start
                elif at is not None:
                    fh.seek(pos)  # a resumed cursor is a line's start
                elif pos > 0:
                    fh.seek(pos - 1)
                    if fh.read(1) != b"\n":  # mid-line: that record belongs to the range before
                        pos += len(fh.readline())
                while stop is None or pos < stop:
                    line = fh.readline()
                    if not line:
                        break
                    offset, pos = pos, pos + len(line)
                    if not line.strip():
                        continue
                    mine = in_heldout(f"{rel}@{offset}", self.fraction) == (split == "heldout")
                    if mine or (check and check.open):
                        text = self._parse(line)
                        if check and check.open:
                            check.see(text, line)
                        if mine:
                            yield text, pos, read()
            except formats.DamagedStream as e:
                raise UserError(f"{path}: {e} after byte {pos}{where}; re-download the file or remove it") from None
        if check and (compressed or part.stop >= self.size(path)):
            check.end()  # the whole file was read

    def _parse(self, line: bytes):
        """The text field of one JSON line: its value as it is (null, a number: counted by the reader), or
        UNDECODABLE, NOT_JSON or NO_FIELD."""
        try:
            record = json.loads(line.decode("utf-8").removeprefix("\ufeff"))  # (a file saved with a BOM)
        except UnicodeDecodeError:
            return UNDECODABLE
        except json.JSONDecodeError:
            return NOT_JSON
        if not isinstance(record, dict) or self.text_field not in record:
            return NO_FIELD
        return record[self.text_field]

    def _rows(self, part: Part, split: str, at: int | None) -> Iterator[tuple[object, int]]:
        """The texts of `split` among the rows of the Parquet row groups [part.start, part.stop)."""
        self._layout(part.path)  # the text column exists
        rel = os.path.relpath(part.path, self.root)
        heldout = split == "heldout"
        for row, text in formats.parquet_values(part.path, range(part.start, part.stop), self.text_field, at):
            if in_heldout(f"{rel}#{row}", self.fraction) == heldout:
                yield text, row + 1, 0


class _FieldCheck:
    """Watches the first FIELD_CHECK records of a JSON-lines file: if none has the text field (a wrong
    config.data.text_field, or a file that is not JSON lines), the build stops with one line naming the file,
    instead of skipping every record. Undecodable lines tell nothing and are not counted."""

    def __init__(self, path: str, field: str):
        self.path, self.field = path, field
        self.open, self.seen, self.first_keys = True, 0, None

    def see(self, text, line: bytes) -> None:
        """One record's parsed text (what FileSource._parse returned)."""
        if text is UNDECODABLE:
            return
        if text is not NO_FIELD and text is not NOT_JSON:
            self.open = False  # a record with the field: the field is right
            return
        self.seen += 1
        if self.first_keys is None and text is NO_FIELD:
            record = json.loads(line)
            self.first_keys = list(record) if isinstance(record, dict) else None
        if self.seen >= FIELD_CHECK:
            self._fail(whole=False)

    def end(self) -> None:
        """The file ended: fewer than FIELD_CHECK records, none with the field, is a wrong field too."""
        if self.open and self.seen:
            self._fail(whole=True)

    def _fail(self, whole: bool) -> None:
        noun = "line" if self.first_keys is None else "record"
        one = self.seen == 1
        who = f"its only {noun}" if one else f"none of its {'' if whole else 'first '}{self.seen} {noun}s"
        if self.first_keys is None:
            raise UserError(f"{self.path}: {who} {'is not' if one else 'is'} a JSON object; give JSON lines (one "
                            "object per line), or name the file .txt to read it as one document")
        keys = ", ".join(self.first_keys[:10]) or "none"
        raise UserError(f"{self.path}: {who} {'has no' if one else 'has the'} field {self.field!r} (the first "
                        f"one's fields: {keys}); set config.data.text_field to the field holding the text")


def _skip(fh, n: int) -> None:
    """Reads and drops the first `n` bytes of a stream."""
    while n > 0:
        got = len(fh.read(min(n, 1 << 20)))
        if not got:
            return
        n -= got


def file_source(data_cfg: ml_collections.ConfigDict) -> FileSource:
    """The files of config.data.source=stdlib (the built-in corpus) or text (config.data.path)."""
    kind = data_cfg.source
    if kind == "stdlib":
        root = stdlib_root()
        if not os.path.isdir(root):
            raise UserError(f"config.data.source=stdlib: the standard library directory {root} is missing; "
                            "use config.data.source=text with config.data.path")
        files = _stdlib_files(root)
    elif kind == "text":
        if not data_cfg.path:
            raise UserError("config.data.path is empty; give the corpus files (text, JSONL, Parquet) for config.data.source=text")
        files = _text_files(data_cfg.path)
        root = _common_root(files) if files else "/"
    else:
        raise ValueError(f"file_source: not a file source: {kind!r}")
    if not files:
        raise UserError(f"config.data: source {kind!r} has no files; check config.data.path")
    source = FileSource(kind, root, files, data_cfg.heldout_fraction,
                        data_cfg.text_field, data_cfg.max_files)
    if len(source.files) and not source.files["train"]:
        raise UserError(f"config.data: every file of source {kind!r} fell in the held-out split; "
                        "add files or lower config.data.heldout_fraction")
    return source
