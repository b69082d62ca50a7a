"""What every data source is: documents (str) per split, counted as they are read.

A source names its splits "train" and "heldout"; `Source.documents` yields the
non-empty documents of one split and counts what it read and skipped in a
`ReadStats` (a record whose text field holds no text, or is not UTF-8, is
skipped and counted, never an error). Subclasses say what their read units are (a file, a dataset
example) and how a unit becomes text. `in_heldout` is the hash split shared by
every source that splits its own records.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable, Iterator

SPLITS = ("train", "heldout")


class _Undecodable:
    def __repr__(self) -> str:
        return "UNDECODABLE"


UNDECODABLE = _Undecodable()  # what a reader yields for a record whose text is not UTF-8 (counted, skipped)


@dataclasses.dataclass
class ReadStats:
    """What a pass over a source read and skipped."""

    files: int = 0  # read units: files, or examples of a dataset
    documents: int = 0
    skipped_undecodable: int = 0
    skipped_empty: int = 0
    skipped_not_text: int = 0  # records whose text field is null or not a string
    chars: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def keep(self, doc) -> bool:
        """Counts a document read: kept (a string), or skipped as undecodable (UNDECODABLE), not text (null,
        a number) or empty (whitespace only)."""
        if doc is UNDECODABLE:
            self.skipped_undecodable += 1
            return False
        if not isinstance(doc, str):
            self.skipped_not_text += 1
            return False
        if not doc.strip():
            self.skipped_empty += 1
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
                stats.skipped_undecodable += 1
