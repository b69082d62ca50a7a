"""Text sources: the built-in corpus (the Python standard library) and text/JSONL files.

A source yields documents (str) for a split ("train" or "heldout"). The split
is by file and deterministic: a file is held out when a hash of its path falls
below `heldout_fraction`, so adding or removing files never moves other files
between splits. Files that do not decode as UTF-8 are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import sysconfig
from typing import Iterator

import ml_collections

from salt_jax.errors import UserError

SPLITS = ("train", "heldout")


@dataclasses.dataclass
class ReadStats:
    """What a pass over a source read and skipped."""

    files: int = 0
    documents: int = 0
    skipped_undecodable: int = 0
    skipped_empty: int = 0
    chars: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def keep(self, doc: str) -> bool:
        """Counts a decoded document: kept, or skipped as empty (whitespace only)."""
        if not doc.strip():
            self.skipped_empty += 1
            return False
        self.documents += 1
        self.chars += len(doc)
        return True


def stdlib_root() -> str:
    """Directory of the running interpreter's standard library sources."""
    return sysconfig.get_paths()["stdlib"]


def _in_heldout(relpath: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _stdlib_files(root: str) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # site-packages holds installed third-party code, not the standard library.
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return files


def _text_files(patterns: str) -> list[str]:
    files = []
    for pattern in [p for p in patterns.split(",") if p.strip()]:
        matches = sorted(glob.glob(os.path.expanduser(pattern.strip()), recursive=True))
        if not matches:
            raise UserError(f"config.data.path: no file matches {pattern.strip()!r}; "
                            "give existing files, directories or glob patterns (comma-separated)")
        for m in matches:
            if os.path.isdir(m):
                files.extend(sorted(glob.glob(os.path.join(m, "**", "*"), recursive=True)))
            else:
                files.append(m)
    return [f for f in files if os.path.isfile(f)]


class FileSource:
    """Documents from files: one document per file, or one per JSONL record.

    Plain files are split by a hash of their path; JSONL files are read by both
    splits and their records split by a hash of (path, line), so a single JSONL
    file has a held-out part too.
    """

    def __init__(self, kind: str, root: str, files: list[str], heldout_fraction: float,
                 text_field: str = "text", max_files: int = 0):
        self.kind, self.root, self.text_field, self.fraction = kind, root, text_field, heldout_fraction
        if max_files > 0:
            files = files[:max_files]
        self.files = {s: [] for s in SPLITS}
        for f in files:
            rel = os.path.relpath(f, root)
            if f.endswith(".jsonl"):
                self.files["train"].append(f)
                self.files["heldout"].append(f)
            else:
                self.files["heldout" if _in_heldout(rel, heldout_fraction) else "train"].append(f)

    def fingerprint(self) -> str:
        """Identifies the files (paths and sizes) and the split; keys the caches."""
        h = hashlib.sha256(f"{self.kind}:{self.text_field}:{self.fraction}".encode())
        for split in SPLITS:
            for f in self.files[split]:
                h.update(f"{split}:{os.path.relpath(f, self.root)}:{os.path.getsize(f)}\n".encode())
        return h.hexdigest()[:16]

    def documents(self, split: str, stats: ReadStats | None = None) -> Iterator[str]:
        stats = stats if stats is not None else ReadStats()
        for path in self.files[split]:
            stats.files += 1
            try:
                with open(path, "rb") as fh:
                    raw = fh.read()
            except OSError as e:
                raise UserError(f"{path}: cannot read ({e.strerror}); fix its permissions or remove it") from None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.skipped_undecodable += 1
                continue
            yield from filter(stats.keep, self._split_docs(text, path, split))

    def _split_docs(self, text: str, path: str, split: str) -> Iterator[str]:
        if not path.endswith(".jsonl"):
            yield text
            return
        rel = os.path.relpath(path, self.root)
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or _in_heldout(f"{rel}:{lineno}", self.fraction) != (split == "heldout"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno}: not valid JSON; fix the line or remove the file") from None
            value = record.get(self.text_field) if isinstance(record, dict) else None
            if not isinstance(value, str):
                raise UserError(f"{path}:{lineno}: no string field {self.text_field!r}; "
                                "set config.data.text_field to the field holding the text")
            yield value


SOURCES = ("stdlib", "text", "tfds", "seqio", "arrayrecord")


def make_source(data_cfg: ml_collections.ConfigDict):
    """The source named by config.data.source (see SOURCES); tfds/seqio/arrayrecord live in salt_jax.sources."""
    kind = data_cfg.source
    if kind in ("tfds", "seqio", "arrayrecord"):
        from salt_jax import sources

        cls = {"tfds": sources.TFDSSource, "seqio": sources.SeqioSource, "arrayrecord": sources.ArrayRecordSource}
        return cls[kind](data_cfg)
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
        root = os.path.commonpath([os.path.abspath(f) for f in files]) if files else "/"
        if len(files) == 1:
            root = os.path.dirname(os.path.abspath(files[0]))
    else:
        raise UserError(f"config.data.source={kind!r}: unknown source; use one of {', '.join(SOURCES)}")
    if not files:
        raise UserError(f"config.data: source {kind!r} has no files; check config.data.path")
    source = FileSource(kind, root, [os.path.abspath(f) for f in files], data_cfg.heldout_fraction,
                        data_cfg.get("text_field", "text"), data_cfg.get("max_files", 0))
    if len(source.files) and not source.files["train"]:
        raise UserError(f"config.data: every file of source {kind!r} fell in the held-out split; "
                        "add files or lower config.data.heldout_fraction")
    logging.info("source %s: %d train files, %d held-out files under %s", kind,
                 len(source.files["train"]), len(source.files["heldout"]), root)
    return source
