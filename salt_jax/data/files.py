"""File sources: the built-in corpus (the Python standard library) and text/JSONL files.

Both are a `FileSource` (one document per file, or one per JSONL record). The split
is by file and deterministic: a file is held out when a hash of its path falls
below `heldout_fraction`, so adding or removing files never moves other files
between splits. Files that do not decode as UTF-8 are skipped and counted.

A file source can be read in parts (`tasks`): whole plain files, and byte
ranges of JSONL files (a record belongs to the range its line starts in), so
the token store's workers and hosts each read only their own part of the
corpus, and the parts concatenated in order are exactly `documents(split)`.
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
from salt_jax.data.documents import SPLITS, Source, in_heldout
from salt_jax.errors import UserError


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
    """Bytes [start, stop) of one file: a whole plain file, or a range of a JSONL file's lines."""

    path: str
    start: int
    stop: int


class FileSource(Source):
    """Documents from files: one document per file, or one per JSONL record.

    Plain files are split by a hash of their path; JSONL files are read by both
    splits and their records split by a hash of (path, byte offset of the line),
    so a single JSONL file has a held-out part too.
    """

    VERSION = 2  # 2: JSONL records are split by their byte offset (1: by line number)

    def __init__(self, kind: str, root: str, files: list[str], heldout_fraction: float,
                 text_field: str = "text", max_files: int = 0):
        self.kind, self.root, self.text_field, self.fraction = kind, root, text_field, heldout_fraction
        if max_files > 0:
            files = files[:max_files]
        self.files = {s: [] for s in SPLITS}
        self._sizes: dict[str, int] = {}
        for f in files:
            rel = os.path.relpath(f, root)
            if f.endswith(".jsonl"):
                self.files["train"].append(f)
                self.files["heldout"].append(f)
            else:
                self.files["heldout" if in_heldout(rel, heldout_fraction) else "train"].append(f)

    def fingerprint(self) -> str:
        """Identifies the files (paths and sizes) and the split; keys the caches."""
        jsonl = any(f.endswith(".jsonl") for split in SPLITS for f in self.files[split])
        version = f"v{self.VERSION}:" if jsonl else ""  # only the JSONL split changed: other stores stay valid
        h = hashlib.sha256(f"{version}{self.kind}:{self.text_field}:{self.fraction}".encode())
        for split in SPLITS:
            for f in self.files[split]:
                h.update(f"{split}:{os.path.relpath(f, self.root)}:{self.size(f)}\n".encode())
        return h.hexdigest()[:16]

    def size(self, path: str) -> int:
        if path not in self._sizes:
            self._sizes[path] = paths.getsize(path)
        return self._sizes[path]

    def total_chars(self, split: str) -> int:
        """Bytes of the split's files: the size of the text to tokenize, for the build's ETA."""
        return sum(self.size(f) for f in self.files[split])

    def tasks(self, split: str, target_bytes: int) -> list[list[Part]]:
        """The split's files as consecutive groups of about `target_bytes` (one token-store shard each):
        small files packed together, JSONL files cut into byte ranges, a plain file never split."""
        tasks, group, size = [], [], 0
        for f in self.files[split]:
            n = self.size(f)
            cuts = range(0, n, target_bytes) if f.endswith(".jsonl") else [0]
            for start in cuts:
                stop = min(start + target_bytes, n) if f.endswith(".jsonl") else n
                group.append(Part(f, start, stop))
                size += stop - start
                if size >= target_bytes:
                    tasks.append(group)
                    group, size = [], 0
        if group:
            tasks.append(group)
        return tasks

    def part_documents(self, parts: list[Part], split: str, stats) -> Iterator[str]:
        """The documents of `parts` of `split`, counted in `stats` (a file counted in its first part)."""
        for part in parts:
            if part.start == 0:
                stats.files += 1
            try:
                for text in self._texts(part.path, split, part):
                    if stats.keep(text):
                        yield text
            except UnicodeDecodeError:
                stats.skipped_undecodable += 1

    def _units(self, split: str) -> list[str]:
        return self.files[split]

    def _texts(self, path: str, split: str, part: Part | None = None) -> Iterator[str]:
        try:
            if not path.endswith(".jsonl"):
                with paths.open(path, "rb") as fh:
                    return iter([fh.read().decode("utf-8")])
            part = part or Part(path, 0, self.size(path))
            return self._records(paths.open(path, "rb"), path, split, part.start, part.stop)
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror or e}); fix its permissions or remove it") from None

    def _records(self, fh, path: str, split: str, start: int, stop: int) -> Iterator[str]:
        """The texts of `split` among the JSONL records whose line starts in bytes [start, stop), streamed
        line by line (any file size in constant memory). A line that is not UTF-8 ends the range there
        (counted as one undecodable file)."""
        rel = os.path.relpath(path, self.root)
        with fh:
            pos = start
            if start > 0:
                fh.seek(start - 1)
                if fh.read(1) != b"\n":  # mid-line: that record belongs to the range before
                    pos += len(fh.readline())

            def lines():
                nonlocal pos
                while pos < stop:
                    raw = fh.readline()
                    if not raw:
                        return
                    yield pos, raw.decode("utf-8")
                    pos += len(raw)

            yield from self._parse(lines(), path, rel, split)

    def _parse(self, lines, path: str, rel: str, split: str) -> Iterator[str]:
        for offset, line in lines:
            if not line.strip() or in_heldout(f"{rel}@{offset}", self.fraction) != (split == "heldout"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}: the line at byte {offset} is not valid JSON; fix the line or remove "
                                "the file") from None
            value = record.get(self.text_field) if isinstance(record, dict) else None
            if not isinstance(value, str):
                raise UserError(f"{path}: the record at byte {offset} has no string field {self.text_field!r}; "
                                "set config.data.text_field to the field holding the text")
            yield value


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
            raise UserError("config.data.path is empty; give the text/JSONL files for config.data.source=text")
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
