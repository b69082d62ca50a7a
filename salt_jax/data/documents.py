"""What every data source is: documents (str) per split, counted as they are read.

A source names its splits "train" and "heldout"; `Source.documents` yields the
non-empty documents of one split and counts what it read and skipped in a
`ReadStats`: a record that holds no usable text is skipped and counted by its
cause (`SKIPS`), never an error, so a bad record costs that record only.
Subclasses say what their read units are (a file, a dataset example) and how a
unit becomes text. `in_heldout` is the hash split shared by
every source that splits its own records.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable, Iterator

SPLITS = ("train", "heldout")


class Skip:
    """What a reader yields in place of a record's text when the record holds no usable text: the cause
    (a key of SKIPS). The store counts it and moves on; only that record is lost."""

    def __init__(self, cause: str):
        self.cause = cause

    def __repr__(self) -> str:
        return f"Skip({self.cause!r})"


# The causes a record is skipped for, each counted in meta.json's "skipped" and the build's summary line, with
# the words the summary line uses.
SKIPS = {
    "undecodable": "not UTF-8",
    "empty": "empty",
    "not_text": "null or not a string",
    "no_field": "without the text field",
    "not_json": "not JSON",
}
UNDECODABLE, NO_FIELD, NOT_JSON = Skip("undecodable"), Skip("no_field"), Skip("not_json")


def as_text(value):
    """A record's text field as str: bytes decoded as UTF-8 (UNDECODABLE when they are not); anything else as is."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return UNDECODABLE
    return value


@dataclasses.dataclass
class ReadStats:
    """What a pass over a source read and skipped: every record read is one document or one skip."""

    files: int = 0  # read units: files, or examples of a dataset
    documents: int = 0
    skipped: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(SKIPS, 0))  # cause -> records
    chars: int = 0
    input_bytes: int = 0  # of the files read so far (a task's progress; not in as_dict)

    def as_dict(self) -> dict:
        """The counts, as meta.json and a task's record hold them."""
        return {"files": self.files, "documents": self.documents, "skipped": dict(self.skipped),
                "chars": self.chars}

    @classmethod
    def of(cls, record: dict) -> "ReadStats":
        """The counts of a record written by as_dict (or by a build before the per-cause dict:
        skipped_undecodable, ...), so a build resumed across versions still counts every record."""
        skipped = {cause: int(record.get("skipped", {}).get(cause, record.get(f"skipped_{cause}", 0)))
                   for cause in SKIPS}
        return cls(int(record.get("files", 0)), int(record.get("documents", 0)), skipped,
                   int(record.get("chars", 0)))

    def add(self, other: "ReadStats") -> None:
        self.files, self.documents, self.chars = (self.files + other.files, self.documents + other.documents,
                                                  self.chars + other.chars)
        for cause, n in other.skipped.items():
            self.skipped[cause] += n

    @property
    def records(self) -> int:
        """Records read: kept plus skipped."""
        return self.documents + sum(self.skipped.values())

    def keep(self, doc) -> bool:
        """Counts a record read: kept (a non-empty string), or skipped for its cause (a Skip), as not text
        (null, a number) or as empty (whitespace only)."""
        if isinstance(doc, Skip):
            self.skipped[doc.cause] += 1
            return False
        if not isinstance(doc, str):
            self.skipped["not_text"] += 1
            return False
        if not doc.strip():
            self.skipped["empty"] += 1
            return False
        self.documents += 1
        self.chars += len(doc)
        return True


def in_heldout(key: str, fraction: float) -> bool:
    """Whether the record named `key` is held out: a hash of the key below `fraction` (stable across runs)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


class Source:
    """A text source: `fingerprint()` keys the caches, `documents(split)` yields its documents.

    Subclasses implement `_units(split)` (the read units of a split, in a fixed
    order) and `_texts(unit, split)` (the documents of one unit, possibly
    streamed; UnicodeDecodeError ends the unit there, counted as undecodable).
    """

    kind = ""

    def fingerprint(self) -> str:
        raise NotImplementedError

    def _units(self, split: str) -> Iterable:
        raise NotImplementedError

    def _texts(self, unit, split: str) -> Iterable[str]:
        raise NotImplementedError

    def documents(self, split: str, stats: ReadStats | None = None) -> Iterator[str]:
        stats = stats if stats is not None else ReadStats()
        for unit in self._units(split):
            stats.files += 1
            try:
                for text in self._texts(unit, split):  # lazily: a unit may hold many documents
                    if stats.keep(text):
                        yield text
            except UnicodeDecodeError:
                stats.skipped["undecodable"] += 1
